// One card per photo: preview, state, progress, and the labels or the reason it failed.

const STATE_TEXT = {
  checking: "Checking",
  uploading: "Uploading",
  importing: "Importing",
  queued: "Queued",
  done: "Done",
  failed: "Failed",
};

let counter = 0;

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function percent(score) {
  const value = score * 100;
  return `${value >= 10 ? value.toFixed(0) : value.toFixed(1)}%`;
}

export function labelList(labels, name) {
  const list = element("ol", "labels");
  list.setAttribute("aria-label", `Labels for ${name}, best first`);
  for (const { label, score } of labels) {
    const item = element("li", "label");
    item.append(element("span", "label-name", label), element("span", "label-score",
      percent(score)));
    const bar = element("span", "bar");
    bar.setAttribute("aria-hidden", "true");
    const fill = element("span", "bar-fill");
    fill.style.width = `${Math.max(1, Math.round(score * 100))}%`;
    bar.append(fill);
    item.append(bar);
    list.append(item);
  }
  return list;
}

export class Card {
  constructor(name, { previewUrl = null, announce = () => {} } = {}) {
    this.name = name;
    this.announce = announce;
    const id = `card-${++counter}`;
    this.root = element("li", "card");
    const article = element("article");
    article.setAttribute("aria-labelledby", `${id}-name`);
    this.thumb = element("div", "thumb");
    this.setPreview(previewUrl);
    const body = element("div", "card-body");
    const title = element("h3", "card-name", name);
    title.id = `${id}-name`;
    title.title = name;
    this.stateLine = element("p", "state");
    this.badge = element("span", "badge");
    this.detail = element("span", "state-detail");
    this.stateLine.append(this.badge, this.detail);
    this.progress = element("progress", "progress");
    this.progress.max = 100;
    this.progress.value = 0;
    this.progress.setAttribute("aria-label", `Upload progress of ${name}`);
    this.outcome = element("div", "outcome");
    body.append(title, this.stateLine, this.progress, this.outcome);
    article.append(this.thumb, body);
    this.root.append(article);
  }

  setPreview(url, alt) {
    this.thumb.replaceChildren();
    this.hasPreview = Boolean(url);
    if (!url) {
      this.thumb.append(element("span", "no-preview", "No preview"));
      return;
    }
    const img = element("img");
    img.alt = alt || `Preview of ${this.name}`;
    img.decoding = "async";
    img.addEventListener("error", () => this.setPreview(null), { once: true });
    img.src = url;
    this.thumb.append(img);
  }

  setState(state, detail = "", { silent = false } = {}) {
    const changed = this.root.dataset.state !== state;
    this.root.dataset.state = state;
    this.badge.textContent = STATE_TEXT[state];
    this.detail.textContent = detail;
    this.progress.hidden = state !== "uploading";
    if (changed && !silent) this.announce(`${this.name}: ${STATE_TEXT[state].toLowerCase()}${
      detail && state !== "uploading" ? `, ${detail}` : ""}`);
  }

  setProgress(fraction) {
    const value = Math.round(fraction * 100);
    this.progress.value = value;
    this.detail.textContent = `${value}%`;
  }

  setImageId(imageId) {
    this.root.dataset.imageId = imageId;
  }

  setDone(result) {
    const top = result.labels[0];
    this.setState("done", top ? `${top.label}, ${percent(top.score)}` : "");
    const meta = element("p", "meta");
    const parts = [];
    if (result.model) parts.push(result.model.name);
    if (result.timings && result.timings.total_ms !== undefined) {
      parts.push(`processed in ${Math.round(result.timings.total_ms)} ms`);
    }
    if (result.image && result.image.width) {
      parts.push(`${result.image.width}×${result.image.height}`);
    }
    meta.textContent = parts.join(" · ");
    this.outcome.replaceChildren(labelList(result.labels, this.name), meta);
  }

  setFailed(message, code) {
    this.setState("failed", "", { silent: true });
    const reason = element("p", "reason", message);
    this.outcome.replaceChildren(reason);
    if (code) {
      const small = element("p", "reason-code", `Reason code: ${code}`);
      this.outcome.append(small);
    }
    this.announce(`${this.name}: failed. ${message}`);
  }
}
