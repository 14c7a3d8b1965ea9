// The page: sign in where the front asks for it; take photos from the pickers, drops, pastes
// and URL imports, send each straight to S3, and show its result when the processor has
// written it.

import { ApiError, createImport, createUpload, getConfig, suggestWords, uploadToS3,
  waitForResult }
  from "./api.js";
import { Card } from "./cards.js";
import { ResultStream } from "./events.js";
import { CONTENT_TYPES, checkFile, formatBytes, typeNames } from "./checks.js";
import { Gallery } from "./gallery.js";
import { processingMessage, requestMessage, signInMessage } from "./messages.js";
import { Session } from "./session.js";

// Used until /api/config answers, and if it never does; the server checks again anyway.
const FALLBACK_CONFIG = {
  max_upload_bytes: 20 * 1024 * 1024,
  max_pixels: 64000000,
  content_types: CONTENT_TYPES,
};
// Uploads in flight at once; the rest wait their turn in order.
const PARALLEL_UPLOADS = 3;

const $ = (id) => document.getElementById(id);

// A touch screen probably has a camera: offer the camera button there.
if (window.matchMedia("(pointer: coarse)").matches) {
  document.documentElement.classList.add("touch");
}

const cards = $("cards");
const announcer = $("announcer");
const knownLabels = new Set();
let config = FALLBACK_CONFIG;
function showLimits() {
  $("limits").textContent = `${typeNames(config.content_types)} images, up to `
    + `${formatBytes(config.max_upload_bytes)} each.`;
}
showLimits();
const configReady = getConfig().then((body) => {
  config = body;
  showLimits();
}).catch(() => {});

function announce(text) {
  const line = document.createElement("p");
  line.textContent = text;
  announcer.append(line);
  while (announcer.childElementCount > 5) announcer.firstElementChild.remove();
}

function rememberLabels(labels) {
  const list = $("known-labels");
  for (const label of labels) {
    if (knownLabels.has(label)) continue;
    knownLabels.add(label);
    const option = document.createElement("option");
    option.value = label;
    list.append(option);
  }
}

const gallery = new Gallery({
  list: $("gallery"),
  status: $("gallery-status"),
  newer: $("newer-page"),
  older: $("older-page"),
  pageNumber: $("page-number"),
  onLabels: rememberLabels,
});

function addCard(name, previewUrl) {
  const card = new Card(name, { previewUrl, announce });
  $("uploads-empty").hidden = true;
  cards.prepend(card.root);
  return card;
}

let refreshTimer = 0;
function refreshGallerySoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => gallery.refreshIfFirstPage(), 400);
}

let stream = null;

async function followResult(card, resultUrl) {
  card.setState("queued", "waiting for the recognition service");
  try {
    const imageId = decodeURIComponent(resultUrl.split("/").pop());
    const poll = () => waitForResult(resultUrl);
    const result = await (stream ? stream.wait(imageId, poll) : poll());
    if (result.status === "done") {
      card.setDone(result);
      rememberLabels(result.labels.map((l) => l.label));
      // An import has no local file to preview: show the stored image instead.
      if (!card.hasPreview) {
        card.setPreview(`/api/results/${encodeURIComponent(result.image_id)}/image`);
      }
    } else {
      const code = result.error ? result.error.code : "";
      card.setFailed(processingMessage(code, config), code);
    }
    refreshGallerySoon();
  } catch (error) {
    card.setFailed(requestMessage(error, config), error.code);
  }
}

// One slot per upload in flight; a file waits for a free slot.
let active = 0;
const waiting = [];
function withSlot(task) {
  return new Promise((resolve) => {
    const run = async () => {
      active += 1;
      try {
        await task();
      } finally {
        active -= 1;
        const next = waiting.shift();
        if (next) next();
        resolve();
      }
    };
    if (active < PARALLEL_UPLOADS) run(); else waiting.push(run);
  });
}

async function sendFile(file) {
  const previewUrl = URL.createObjectURL(file);
  const card = addCard(file.name || "Pasted image", previewUrl);
  card.setState("checking");
  await configReady;
  const check = await checkFile(file, config);
  if (!check.contentType) {
    card.setFailed(check.message);
    return;
  }
  let body;
  await withSlot(async () => {
    card.setState("uploading", "0%");
    try {
      body = await createUpload(file, check.contentType);
      card.setImageId(body.image_id);
      await uploadToS3(body.upload, file, check.contentType, (f) => card.setProgress(f));
    } catch (error) {
      card.setFailed(requestMessage(error, config), error.code);
      body = null;
    }
  });
  if (body) await followResult(card, body.result_url);
}

function sendFiles(files) {
  // Signed out, the photo area is hidden: a drop or paste then has nowhere to go.
  if (!$("sign-in").hidden) return;
  for (const file of files) sendFile(file);
}

async function importUrl(url) {
  const card = addCard(url, null);
  card.setState("importing", "fetching the image");
  try {
    const body = await createImport(url);
    card.setImageId(body.image_id);
    await followResult(card, body.result_url);
  } catch (error) {
    card.setFailed(requestMessage(error, config), error instanceof ApiError ? error.code : "");
  }
}

// Pickers: the camera button is a second input with `capture`, so the first still offers files.
for (const input of [$("file-input"), $("camera-input")]) {
  input.addEventListener("change", () => {
    sendFiles([...input.files]);
    input.value = "";
  });
}

// Drops anywhere on the page; the drop zone lights up while something is dragged over it.
const dropzone = $("dropzone");
let dragDepth = 0;
const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
document.addEventListener("dragenter", (event) => {
  if (!hasFiles(event)) return;
  dragDepth += 1;
  dropzone.classList.add("dragging");
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) dropzone.classList.remove("dragging");
});
document.addEventListener("dragover", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
});
document.addEventListener("drop", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  dragDepth = 0;
  dropzone.classList.remove("dragging");
  sendFiles([...event.dataTransfer.files]);
});

// Paste: images from the clipboard, wherever the focus is, unless text goes into a field.
document.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files || [])];
  if (files.length === 0) return;
  event.preventDefault();
  sendFiles(files);
});

$("import-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = $("import-url");
  const error = $("import-error");
  const url = field.value.trim();
  if (!/^https?:\/\/\S+$/i.test(url)) {
    error.textContent = "Enter a web address starting with http:// or https://.";
    error.hidden = false;
    field.setAttribute("aria-invalid", "true");
    field.focus();
    return;
  }
  error.hidden = true;
  field.removeAttribute("aria-invalid");
  field.value = "";
  importUrl(url);
});

$("gallery-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  gallery.filter($("label-filter").value);
});
$("clear-filter").addEventListener("click", () => {
  $("label-filter").value = "";
  gallery.filter("");
});

// Suggest words as the user types: the hierarchy's words (GET /api/words, an index of
// labels, categories and synonyms, never a scan of results) and the labels seen so far.
let suggesting = null;
let suggestTimer = 0;
$("label-filter").addEventListener("input", (event) => {
  const prefix = event.target.value.trim().toLowerCase();
  clearTimeout(suggestTimer);
  if (!prefix) return;
  suggestTimer = setTimeout(async () => {
    const token = {};
    suggesting = token;
    try {
      const body = await suggestWords(prefix);
      if (suggesting !== token) return;
      const seen = [...knownLabels].filter((l) => l.toLowerCase().startsWith(prefix));
      const words = [...new Set([...body.words, ...seen])];
      $("known-labels").replaceChildren(...words.map((word) => {
        const option = document.createElement("option");
        option.value = word;
        return option;
      }));
    } catch {
      // Suggestions are a help only; the filter works without them.
    }
  }, 150);
});

// Signing in: the form while signed out, the photos and the gallery while signed in.
const signInSection = $("sign-in");
const appSections = [...document.querySelectorAll("[data-signed-in]")];
const signInForm = $("sign-in-form");
const signInError = $("sign-in-error");

function showApp(session, previous) {
  // Someone else signed in on this page: start from a clean page, with nothing of the other.
  if (previous && session && previous !== session.user) {
    window.location.reload();
    return;
  }
  const wasSignedOut = !signInSection.hidden;
  signInSection.hidden = true;
  for (const section of appSections) section.hidden = false;
  $("account").hidden = !session;
  if (session) $("account-name").textContent = session.user;
  if (wasSignedOut || !previous) {
    gallery.go(0);
  }
  if (!stream && config.events_url) {
    stream = new ResultStream(config.events_url);
    stream.start();
  }
  if (wasSignedOut) {
    announce(`Signed in as ${session.user}.`);
    // Focus where the page's work begins, as if it had just loaded.
    $("add-heading").focus();
  }
}

function showSignIn(message) {
  if (stream) stream.stop();
  stream = null;
  for (const section of appSections) section.hidden = true;
  $("account").hidden = true;
  signInSection.hidden = false;
  signInError.textContent = message || "";
  $("sign-in-username").focus();
}

const session = new Session({ onSignedIn: showApp, onSignedOut: showSignIn });

signInForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = $("sign-in-username");
  const password = $("sign-in-password");
  const empty = [username, password].find((field) => !field.value.trim());
  for (const field of [username, password]) field.removeAttribute("aria-invalid");
  if (empty) {
    signInError.textContent = `Enter your ${empty === username ? "username" : "password"}.`;
    empty.setAttribute("aria-invalid", "true");
    empty.focus();
    return;
  }
  const button = $("sign-in-button");
  button.disabled = true;
  signInError.textContent = "";
  try {
    await session.signIn(username.value.trim(), password.value);
    password.value = "";
  } catch (error) {
    signInError.textContent = signInMessage(error);
    if (error.code === "sign_in_failed") {
      password.value = "";
      password.setAttribute("aria-invalid", "true");
      password.focus();
    }
  } finally {
    button.disabled = false;
  }
});

$("sign-out").addEventListener("click", () => {
  $("sign-out").disabled = true;
  session.signOut();
});

// Tokens in cookies need HTTPS: a browser keeps no Secure cookie from a plain-http page,
// except from this machine (localhost).
$("insecure-note").hidden = window.isSecureContext;

configReady.then(() => {
  if (config.auth && config.auth.required) {
    session.start();
  } else {
    showApp(null, null);
  }
});
