// What the page checks before uploading: the real type from the first bytes, and the size.
// The formats and their signatures are the server's own table (imagepipe/core/formats.py).

import { FORMATS, SNIFF_BYTES } from "./formats.js";

const NAMES = Object.fromEntries(FORMATS.map((format) => [format.contentType, format.name]));

// Every content type the pipeline accepts, in the table's order.
export const CONTENT_TYPES = FORMATS.map((format) => format.contentType);

const meets = (bytes, signature) => signature.every(
  ([offset, run]) => run.every((value, i) => bytes[offset + i] === value));

export function sniffType(bytes) {
  const format = FORMATS.find((f) => f.signatures.some((signature) => meets(bytes, signature)));
  return format ? format.contentType : null;
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  const mb = bytes / (1024 * 1024);
  return `${mb < 10 ? mb.toFixed(1) : mb.toFixed(0)} MB`;
}

export function typeNames(contentTypes) {
  const names = [...new Set(contentTypes.map((t) => NAMES[t] || t))];
  return names.length > 1
    ? `${names.slice(0, -1).join(", ")} or ${names[names.length - 1]}` : names.join("");
}

// {contentType} when the file can be uploaded, else {message} saying why not, in plain words.
export async function checkFile(file, config) {
  const accepted = typeNames(config.content_types);
  if (file.size === 0) return { message: "This file is empty." };
  if (file.size > config.max_upload_bytes) {
    return { message: `This file is ${formatBytes(file.size)}; the limit is `
      + `${formatBytes(config.max_upload_bytes)} per image.` };
  }
  const head = new Uint8Array(await file.slice(0, SNIFF_BYTES).arrayBuffer());
  const contentType = sniffType(head);
  if (contentType && config.content_types.includes(contentType)) return { contentType };
  if (file.type.startsWith("image/")) {
    const kind = file.type.slice(6).toUpperCase().replace("SVG+XML", "SVG");
    if (!contentType && !(file.type in NAMES)) {
      return { message: `${kind} images are not supported. Use ${accepted}.` };
    }
  }
  return { message: `This file is not an image, whatever its name says: it does not start `
    + `like a ${accepted} file.` };
}
