// Recent results from GET /api/results: newest first, or those that answer to a word (a label,
// a category, a synonym) best first; paged.

import { listResults } from "./api.js";
import { element, headline, isUnsure, percent, resultPage } from "./cards.js";

const PAGE_SIZE = 12;

function ago(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

// One tile per content on a page: copies of a photo (duplicate_of) join one tile, the newest.
function byContent(results) {
  const groups = new Map();
  for (const result of results) {
    const root = result.duplicate_of || result.image_id;
    const group = groups.get(root);
    if (!group) {
      groups.set(root, { result, count: 1 });
      continue;
    }
    group.count += 1;
    // The newest copy stands for the content (a label's page is ordered by score, not time).
    if (result.created_at > group.result.created_at) group.result = result;
  }
  return [...groups.values()];
}

function tile({ result, count }, unsureBelow) {
  const item = element("li", "tile");
  item.dataset.imageId = result.image_id;
  item.dataset.status = result.status;
  const link = element("a", "tile-link");
  link.href = resultPage(result.image_id);
  const figure = element("figure");
  const lead = headline(result);
  if (result.status === "done") {
    const img = element("img");
    // The front redirects this to a short-lived link to the object in the private bucket.
    img.src = `/api/results/${encodeURIComponent(result.image_id)}/image`;
    // The caption says what it is; the link reads the caption, not the same words twice.
    img.alt = "";
    img.decoding = "async";
    img.addEventListener("error", () => img.replaceWith(element("span", "no-preview",
      "No preview")), { once: true });
    figure.append(img);
  } else {
    figure.append(element("span", "no-preview",
      result.status === "pending" ? "Processing…" : "Failed"));
  }
  const caption = element("figcaption");
  if (result.status === "done") {
    const unsure = !(lead && lead.category) && isUnsure(result, unsureBelow);
    item.dataset.unsure = String(unsure);
    caption.append(element("span", unsure ? "tile-label unsure" : "tile-label",
      lead ? `${lead.text}${unsure ? "?" : ""}` : "Nothing recognised"));
    if (lead) caption.append(element("span", "tile-score", percent(lead.score)));
    if (unsure) caption.append(element("span", "tile-note", "not sure"));
  } else {
    caption.append(element("span", "tile-label",
      result.status === "failed" ? "Failed" : "Processing"));
  }
  if (count > 1) {
    const copies = element("span", "tile-count", `sent ${count} times`);
    item.dataset.count = String(count);
    caption.append(copies);
  }
  const time = element("time", "tile-time", ago(result.created_at));
  time.dateTime = result.created_at;
  caption.append(time);
  figure.append(caption);
  link.append(figure);
  item.append(link);
  return item;
}

export class Gallery {
  constructor({ list, status, newer, older, pageNumber, onLabels = () => {},
    unsureBelow = () => 0.3 }) {
    Object.assign(this, { list, status, newer, older, pageNumber, onLabels, unsureBelow });
    this.label = "";
    this.cursors = [""];
    this.page = 0;
    this.loading = null;
    newer.addEventListener("click", () => this.go(this.page - 1));
    older.addEventListener("click", () => this.go(this.page + 1));
  }

  filter(label) {
    this.label = label.trim();
    this.cursors = [""];
    return this.go(0);
  }

  // Reload the first page, as when a new result arrives; other pages stay where they are.
  refreshIfFirstPage() {
    if (this.page === 0) this.go(0);
  }

  async go(page) {
    if (page < 0 || page >= this.cursors.length) return;
    const token = {};
    this.loading = token;
    this.list.setAttribute("aria-busy", "true");
    try {
      const body = await listResults({ label: this.label, cursor: this.cursors[page],
        limit: PAGE_SIZE });
      if (this.loading !== token) return;
      this.page = page;
      this.cursors.length = page + 1;
      if (body.next_cursor) this.cursors.push(body.next_cursor);
      this.render(body.results);
    } catch (error) {
      if (this.loading !== token) return;
      this.status.textContent = error.code === "invalid_parameter"
        ? "That label cannot be searched for." : "Your photos could not be loaded.";
    } finally {
      if (this.loading === token) this.list.removeAttribute("aria-busy");
    }
  }

  render(results) {
    this.list.replaceChildren(...byContent(results).map((group) =>
      tile(group, this.unsureBelow())));
    this.onLabels(results.flatMap((r) => r.labels.map((l) => l.label)));
    const what = this.label ? `for “${this.label}”` : "";
    if (results.length === 0) {
      this.status.textContent = this.label ? `No results ${what}.` : "No results yet.";
    } else {
      this.status.textContent = this.label
        ? `Photos ${what}, best score first.` : "Newest first.";
    }
    this.newer.disabled = this.page === 0;
    this.older.disabled = this.page + 1 >= this.cursors.length;
    this.pageNumber.textContent = this.cursors.length > 1 || this.page > 0
      ? `Page ${this.page + 1}` : "";
  }
}
