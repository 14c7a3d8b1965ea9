// One card per photo: preview, state, progress, the labels or the reason it failed, and what
// the person can do with it (cancel, retry, dismiss, open its page).

const STATE_TEXT = {
  checking: "Checking",
  waiting: "Waiting",
  uploading: "Uploading",
  importing: "Importing",
  queued: "Processing",
  done: "Done",
  failed: "Failed",
  cancelled: "Cancelled",
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

export function resultPage(imageId) {
  return `/results/${encodeURIComponent(imageId)}`;
}

// Below this best score the page says "not sure" rather than naming the photo.
export function isUnsure(result, unsureBelow) {
  const top = result.labels && result.labels[0];
  return !top || top.score < unsureBelow;
}

// The first line of a result: a confident category where the top label is a coin toss,
// else the best label, or "Not sure" and the best guess.
export function verdict(result, unsureBelow) {
  const top = result.labels[0];
  const lead = headline(result);
  if (lead && lead.category) return `${lead.text}, ${percent(lead.score)}`;
  if (!top) return "Nothing recognised";
  if (isUnsure(result, unsureBelow)) return `Not sure: perhaps ${top.label}`;
  return `${top.label}, ${percent(top.score)}`;
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

export function labelList(labels, name, { quiet = false } = {}) {
  const list = element("ol", quiet ? "labels quiet" : "labels");
  list.setAttribute("aria-label", `${quiet ? "Guesses" : "Labels"} for ${name}, best first`);
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

// A reason in words, and the code it came from in a quieter line for whoever asks for help.
export function reasonLines(message, code) {
  const lines = [element("p", "reason", message)];
  if (code) lines.push(element("p", "reason-code", `Details: ${code}`));
  return lines;
}

export class Card {
  constructor(name, { previewUrl = null, announce = () => {}, onChange = () => {},
    unsureBelow = 0.3 } = {}) {
    this.name = name;
    this.announce = announce;
    this.onChange = onChange;
    this.unsureBelow = unsureBelow;
    this.actions = {};
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
    this.buttons = element("div", "card-actions");
    body.append(title, this.stateLine, this.progress, this.outcome, this.buttons);
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
    // The card's heading names the photo; the preview adds nothing to read out.
    img.alt = alt || "";
    img.decoding = "async";
    img.addEventListener("error", () => this.setPreview(null), { once: true });
    img.src = url;
    this.thumb.append(img);
  }

  // Buttons by name: {cancel: fn, retry: fn, dismiss: fn}; null removes one.
  setActions(actions) {
    this.actions = actions;
    this.buttons.replaceChildren();
    if (this.root.dataset.imageId && ["done", "failed"].includes(this.root.dataset.state)) {
      const link = element("a", "button quiet", "Open");
      link.href = resultPage(this.root.dataset.imageId);
      link.setAttribute("aria-label", `Open the result of ${this.name}`);
      this.buttons.append(link);
    }
    for (const [name, text] of [["cancel", "Cancel"], ["retry", "Retry"],
      ["dismiss", "Dismiss"]]) {
      if (!actions[name]) continue;
      const button = element("button", "button quiet", text);
      button.type = "button";
      button.dataset.action = name;
      button.setAttribute("aria-label", `${text} ${this.name}`);
      button.addEventListener("click", actions[name]);
      this.buttons.append(button);
    }
  }

  // States in between are shown, not announced: a screen reader hears each file's outcome.
  setState(state, detail = "") {
    this.root.dataset.state = state;
    this.badge.textContent = STATE_TEXT[state];
    this.detail.textContent = detail;
    this.progress.hidden = state !== "uploading";
    if (!["done", "failed", "cancelled"].includes(state)) this.outcome.replaceChildren();
    this.onChange();
  }

  setProgress(fraction) {
    const value = Math.round(fraction * 100);
    this.progress.value = value;
    this.detail.textContent = `${value}%`;
  }

  setImageId(imageId) {
    if (imageId) this.root.dataset.imageId = imageId;
    else delete this.root.dataset.imageId;
  }

  setDone(result) {
    const unsure = isUnsure(result, this.unsureBelow);
    this.root.dataset.unsure = String(unsure);
    this.setState("done", verdict(result, this.unsureBelow));
    const parts = [];
    if (result.duplicate_of) {
      const before = element("p", "note");
      const link = element("a", "", "You sent this photo before");
      link.href = resultPage(result.duplicate_of);
      before.append(link, document.createTextNode(": the same labels, without running the "
        + "model again."));
      parts.push(before);
    }
    parts.push(labelList(result.labels, this.name, { quiet: unsure }));
    const meta = element("p", "meta");
    const facts = [];
    if (result.model) facts.push(result.model.name);
    if (result.timings && result.timings.total_ms !== undefined) {
      facts.push(`processed in ${Math.round(result.timings.total_ms)} ms`);
    }
    if (result.image && result.image.width) {
      facts.push(`${result.image.width}×${result.image.height}`);
    }
    meta.textContent = facts.join(" · ");
    parts.push(meta);
    if (result.categories && result.categories.length) {
      parts.splice(parts.length - 1, 0, categoryList(result.categories, this.name));
    }
    this.outcome.replaceChildren(...parts);
    this.setActions({ dismiss: this.actions.dismiss });
    this.announce(`${this.name}: done, ${verdict(result, this.unsureBelow)}.`);
  }

  setFailed(message, code, actions = {}) {
    this.setState(code === "aborted" ? "cancelled" : "failed");
    this.outcome.replaceChildren(...reasonLines(message, code === "aborted" ? "" : code));
    this.setActions(actions);
    this.announce(`${this.name}: ${code === "aborted" ? "cancelled" : "failed"}. ${message}`);
  }
}
