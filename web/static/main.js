// The page: sign in where the front asks for it; take photos from the pickers, drops, pastes
// and URL imports, send each straight to S3, and show its result when the processor has
// written it.

import { ApiError, createImport, createUpload, deleteResult, getConfig, resultUrl,
  suggestWords, uploadToS3, waitForResult } from "./api.js";
import { Card, reasonLines } from "./cards.js";
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
  unsure_below: 0.3,
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
  unsureBelow: () => config.unsure_below,
});

// "3 of 4 done, 1 failed": the batch in one line, and the button that clears what failed.
function summarise() {
  const states = [...cards.children].map((card) => card.dataset.state);
  $("batch").hidden = states.length === 0;
  const count = (...names) => states.filter((state) => names.includes(state)).length;
  const done = count("done");
  const failed = count("failed", "cancelled");
  const parts = [`${done} of ${states.length} done`];
  if (failed) parts.push(`${failed} failed or cancelled`);
  const busy = states.length - done - failed;
  if (busy) parts.push(`${busy} in progress`);
  $("batch-summary").textContent = parts.join(", ");
  $("clear-failed").hidden = failed === 0;
}

function addCard(name, previewUrl) {
  const card = new Card(name, { previewUrl, announce, onChange: summarise,
    unsureBelow: config.unsure_below });
  // In the order chosen: each file after the one picked before it.
  cards.append(card.root);
  card.setActions({ dismiss: () => dismiss(card) });
  summarise();
  return card;
}

function dismiss(card) {
  if (card.cancel) card.cancel();
  card.root.remove();
  summarise();
  refreshGallerySoon();
}

let refreshTimer = 0;
function refreshGallerySoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => gallery.refreshIfFirstPage(), 400);
}

let stream = null;

async function followResult(card, url, retry) {
  card.setState("queued", "the model is looking at it");
  card.setActions({ dismiss: () => dismiss(card) });
  try {
    const imageId = decodeURIComponent(url.split("/").pop());
    const poll = () => waitForResult(url);
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
      card.setFailed(processingMessage(code, config), code, { retry,
        dismiss: () => dismiss(card) });
    }
    refreshGallerySoon();
  } catch (error) {
    card.setFailed(requestMessage(error, config), error.code, { retry,
      dismiss: () => dismiss(card) });
  }
}

// One slot per upload in flight; a file waits for a free slot.
let active = 0;
const waiting = [];
function withSlot(task, onWait) {
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
    if (active < PARALLEL_UPLOADS) {
      run();
    } else {
      waiting.push(run);
      onWait();
    }
  });
}

// Check, wait for a slot, presign, POST to S3, follow the result. Cancel aborts the POST and
// deletes the pending record; retry sends the same file again on the same card.
async function sendFile(file, card = null) {
  if (!card) {
    card = addCard(file.name || "Pasted image", URL.createObjectURL(file));
  }
  const retry = () => sendFile(file, card);
  const controller = new AbortController();
  let imageId = null;
  const cancelled = () => card.setFailed(requestMessage({ code: "aborted" }, config), "aborted",
    { retry, dismiss: () => dismiss(card) });
  card.cancel = () => {
    controller.abort();
    // Nothing in flight yet: say so now, not when a slot frees.
    if (["checking", "waiting"].includes(card.root.dataset.state)) cancelled();
  };
  const actions = { cancel: () => card.cancel() };
  card.setImageId(null);
  card.setState("checking");
  card.setActions(actions);
  await configReady;
  const check = await checkFile(file, config);
  if (!check.contentType) {
    card.setFailed(check.message, "", { dismiss: () => dismiss(card) });
    return;
  }
  if (controller.signal.aborted) return;
  let body = null;
  await withSlot(async () => {
    if (controller.signal.aborted) return;
    card.setState("uploading", "0%");
    card.setActions(actions);
    try {
      body = await createUpload(file, check.contentType);
      imageId = body.image_id;
      card.setImageId(imageId);
      await uploadToS3(body.upload, file, check.contentType, (f) => card.setProgress(f),
        controller.signal);
    } catch (error) {
      body = null;
      // Cancelled or failed, the file was not sent: its pending record goes now rather than
      // at its expiry, so nothing shows it as processing.
      if (imageId) deleteResult(imageId).catch(() => {});
      card.setImageId(null);
      card.setFailed(requestMessage(error, config), error.code,
        { retry, dismiss: () => dismiss(card) });
    }
  }, () => {
    card.setState("waiting", "for a free upload slot");
    card.setActions(actions);
  });
  if (controller.signal.aborted && !body) {
    if (!["cancelled", "failed"].includes(card.root.dataset.state)) cancelled();
    return;
  }
  card.cancel = null;
  if (body) await followResult(card, resultUrl(body.image_id), retry);
}

function sendFiles(files) {
  // Signed out, the photo area is hidden: a drop or paste then has nowhere to go.
  if (!$("sign-in").hidden) return;
  for (const file of files) sendFile(file);
}

$("clear-failed").addEventListener("click", () => {
  for (const node of [...cards.querySelectorAll(
    '.card[data-state="failed"], .card[data-state="cancelled"]')]) node.remove();
  summarise();
  $("add-heading").focus();
});

// The field keeps the address until the server has taken it, so a refusal costs no retyping.
async function importUrl(url) {
  const field = $("import-url");
  const error = $("import-error");
  let body;
  try {
    body = await createImport(url);
  } catch (failure) {
    const code = failure instanceof ApiError ? failure.code : "";
    error.replaceChildren(...reasonLines(requestMessage(failure, config), code));
    error.hidden = false;
    field.setAttribute("aria-invalid", "true");
    announce(`Import failed. ${requestMessage(failure, config)}`);
    return;
  }
  if (field.value.trim() === url || withScheme(field.value.trim()) === url) field.value = "";
  const card = addCard(url, null);
  card.setImageId(body.image_id);
  await followResult(card, body.result_url, null);
}

// "example.com/cat.jpg" is meant as https://example.com/cat.jpg.
function withScheme(text) {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `https://${text}`;
}

// Pickers: the camera button is a second input with `capture`, so the first still offers files.
for (const input of [$("file-input"), $("camera-input")]) {
  input.addEventListener("change", () => {
    sendFiles([...input.files]);
    input.value = "";
  });
}

// Drops anywhere on the page; while files are dragged over it, the whole window says so.
const overlay = $("drop-overlay");
let dragDepth = 0;
const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
const dropping = (on) => {
  overlay.hidden = !on;
  $("dropzone").classList.toggle("dragging", on);
};
document.addEventListener("dragenter", (event) => {
  if (!hasFiles(event) || !$("sign-in").hidden) return;
  dragDepth += 1;
  dropping(true);
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) dropping(false);
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
  dropping(false);
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
  const text = field.value.trim();
  const url = withScheme(text);
  if (!text || !/^https?:\/\/[^\s/]+\.?[^\s]*$/i.test(url)) {
    error.textContent = "Enter a web address, such as example.com/photo.jpg.";
    error.hidden = false;
    field.setAttribute("aria-invalid", "true");
    field.focus();
    return;
  }
  error.hidden = true;
  field.removeAttribute("aria-invalid");
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
