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

// Below this the top label is a coin toss between siblings; a category above it is not.
export const CONFIDENT = 0.5;

// What a result is, in one line: its top label, or where that is a coin toss and a category
// (the most specific, categories come specific first) is confident, that category:
// "a domestic cat, 92%" rather than "tiger cat, 41%".
export function headline(result) {
  const top = result.labels[0];
  const sure = (result.categories || []).find((c) => c.score >= CONFIDENT);
  if (sure && (!top || top.score < CONFIDENT)) {
    const article = /^[aeiou]/i.test(sure.label) ? "an" : "a";
    return { text: `${article} ${sure.label}`, score: sure.score, category: true };
  }
  return top ? { text: top.label, score: top.score, category: false } : null;
}

export function categoryList(categories, name) {
  const list = element("ul", "categories");
  list.setAttribute("aria-label", `Categories of ${name}, most specific first`);
  for (const { label, score } of categories) {
    const item = element("li", "category");
    item.append(element("span", "category-name", label), element("span", "category-score",
      percent(score)));
    list.append(item);
  }
  return list;
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
    const lead = headline(result);
    this.setState("done", lead ? `${lead.text}, ${percent(lead.score)}` : "");
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
    const shown = [labelList(result.labels, this.name)];
    if (result.categories && result.categories.length) {
      shown.push(categoryList(result.categories, this.name));
    }
    this.outcome.replaceChildren(...shown, meta);
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
