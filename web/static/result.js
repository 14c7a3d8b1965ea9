// The page of one result: the photo, every label, its facts, the JSON to copy or download,
// and delete. Its address is the image ID; the API decides who may see it.

import { ApiError, deleteResult, getConfig, getResult, resultUrl } from "./api.js";
import { element, isUnsure, labelList, percent, reasonLines, resultPage, verdict }
  from "./cards.js";
import { formatBytes } from "./checks.js";
import { processingMessage, requestMessage } from "./messages.js";
import { Session } from "./session.js";

const $ = (id) => document.getElementById(id);
const imageId = decodeURIComponent(window.location.pathname.split("/").pop());
let config = { unsure_below: 0.3 };

function fact(list, name, value) {
  if (value === undefined || value === null || value === "") return;
  list.append(element("dt", "", name), element("dd", "", String(value)));
}

function when(iso) {
  const moment = Date.parse(iso);
  return Number.isFinite(moment) ? new Date(moment).toLocaleString() : iso;
}

function stop(title, message) {
  $("result-title").textContent = title;
  $("result-status").replaceChildren(...(Array.isArray(message) ? message : [message]));
  $("result").removeAttribute("aria-busy");
}

function render(result) {
  const unsure = result.status === "done" && isUnsure(result, config.unsure_below);
  document.title = `${result.status === "done" ? verdict(result, config.unsure_below)
    : "A photo"}: imagepipe`;
  $("result-title").textContent = result.status === "done"
    ? verdict(result, config.unsure_below)
    : (result.status === "pending" ? "Still being looked at" : "This photo could not be read");
  if (result.status === "failed") {
    const code = result.error ? result.error.code : "";
    $("result-status").replaceChildren(...reasonLines(processingMessage(code, config), code));
  } else if (result.status === "pending") {
    $("result-status").textContent = "The model has not finished with it yet. Reload in a "
      + "moment.";
  } else {
    $("result-status").textContent = unsure
      ? "The model is not sure what this is: its best guesses are below." : "";
  }

  const figure = $("result-figure");
  figure.replaceChildren();
  if (result.status === "done") {
    const img = element("img");
    img.src = `${resultUrl(result.image_id)}/image`;
    img.alt = result.labels[0] && !unsure ? `The photo, labelled ${result.labels[0].label}`
      : "The photo";
    figure.append(img);
    $("download-image").href = img.src;
    $("download-image").hidden = false;
  } else {
    figure.append(element("span", "no-preview", "No preview"));
  }

  if (result.duplicate_of) {
    const note = $("result-copy-of");
    const link = element("a", "", "You sent this photo before");
    link.href = resultPage(result.duplicate_of);
    note.replaceChildren(link, document.createTextNode(
      ": these labels are that result's, reused without running the model again."));
    note.hidden = false;
  }

  const labels = $("result-labels");
  labels.replaceChildren();
  // Categories (broader groups than labels) lead where the model has them.
  const categories = result.categories || [];
  if (categories.length) {
    labels.append(element("h3", "", "Categories"),
      labelList(categories.map((c) => ({ label: c.label || c.name, score: c.score })),
        "this photo", { quiet: unsure }),
      element("h3", "", "Labels"));
  }
  if (result.labels.length) {
    labels.append(labelList(result.labels, "this photo", { quiet: unsure }));
  } else {
    labels.append(element("p", "hint", result.status === "done" ? "No label scored high "
      + "enough to keep." : "No labels."));
  }

  const facts = $("result-facts");
  facts.replaceChildren();
  const image = result.image || {};
  fact(facts, "Format", image.format);
  if (image.width) fact(facts, "Size", `${image.width} × ${image.height} pixels`);
  if (image.bytes) fact(facts, "File size", formatBytes(image.bytes));
  if (result.model) {
    fact(facts, "Model", `${result.model.name}${result.model.version
      ? ` (version ${result.model.version})` : ""}`);
  }
  if (result.labels[0]) fact(facts, "Best score", percent(result.labels[0].score));
  fact(facts, "Added", result.created_at && when(result.created_at));
  fact(facts, "Processed", result.processed_at && when(result.processed_at));
  for (const [name, ms] of Object.entries(result.timings || {})) {
    fact(facts, `Time: ${name.replace(/_ms$/, "").replace(/_/g, " ")}`,
      `${Math.round(ms)} ms`);
  }
  fact(facts, "Image ID", result.image_id);

  const json = JSON.stringify(result, null, 2);
  $("result-json").textContent = json;
  const download = $("download-json");
  download.href = URL.createObjectURL(new Blob([json], { type: "application/json" }));
  download.download = `${result.image_id}.json`;
  $("result-body").hidden = false;
  $("result").removeAttribute("aria-busy");
}

async function load() {
  try {
    config = { ...config, ...(await getConfig()) };
  } catch {
    // The defaults do.
  }
  try {
    render(await getResult(resultUrl(imageId)));
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      stop("No such photo", "This photo is not here: it was deleted, it expired, or it is "
        + "someone else's.");
    } else {
      stop("The result could not be loaded", requestMessage(error, config));
    }
  }
}

$("copy-json").addEventListener("click", async () => {
  const status = $("copy-status");
  try {
    await navigator.clipboard.writeText($("result-json").textContent);
    status.textContent = "Copied.";
  } catch {
    // No clipboard (an insecure page, say): select the text so that a keystroke copies it.
    const range = document.createRange();
    range.selectNodeContents($("result-json"));
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    status.textContent = "Selected: press Ctrl+C or ⌘C to copy.";
  }
});

$("delete").addEventListener("click", () => {
  $("confirm-delete").hidden = false;
  $("delete-no").focus();
});
$("delete-no").addEventListener("click", () => {
  $("confirm-delete").hidden = true;
  $("delete").focus();
});
$("delete-yes").addEventListener("click", async () => {
  $("delete-yes").disabled = true;
  try {
    await deleteResult(imageId);
  } catch (error) {
    $("delete-yes").disabled = false;
    $("confirm-text").textContent = `Not deleted. ${requestMessage(error, config)}`;
    return;
  }
  $("result-body").hidden = true;
  const back = element("a", "", "Back to your photos");
  back.href = "/";
  stop("Deleted", [document.createTextNode("The photo and its result are gone. "), back]);
  $("result-title").setAttribute("tabindex", "-1");
  $("result-title").focus();
});

function signInFirst() {
  const link = element("a", "", "Sign in on the main page");
  link.href = "/";
  stop("Sign in to see this photo", [link,
    document.createTextNode(", then open this address again.")]);
}

getConfig().then((body) => {
  if (body.auth && body.auth.required) {
    let loaded = false;
    new Session({
      onSignedIn: () => {
        if (!loaded) {
          loaded = true;
          load();
        }
      },
      onSignedOut: signInFirst,
    }).start();
  } else {
    load();
  }
}).catch(() => load());
