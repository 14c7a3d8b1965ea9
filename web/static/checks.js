// What the page checks before uploading: the real type from the first bytes, and the size.
// The signatures are those of uploader/formats.py, which the server uses for imports.

const NAMES = {
  "image/jpeg": "JPEG",
  "image/png": "PNG",
  "image/webp": "WebP",
  "image/gif": "GIF",
  "image/bmp": "BMP",
  "image/tiff": "TIFF",
  "image/heic": "HEIC",
  "image/heif": "HEIF",
};

const HEIF_BRANDS = new Set(["heic", "heix", "hevc", "hevx", "heim", "heis", "mif1", "msf1"]);
const HEIC_BRANDS = new Set(["heic", "heix", "hevc", "hevx"]);

const ascii = (bytes, start, end) => String.fromCharCode(...bytes.slice(start, end));
const startsWith = (bytes, prefix) => prefix.every((value, i) => bytes[i] === value);

export function sniffType(bytes) {
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) return "image/jpeg";
  if (startsWith(bytes, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return "image/png";
  if (ascii(bytes, 0, 4) === "RIFF" && ascii(bytes, 8, 12) === "WEBP") return "image/webp";
  const head6 = ascii(bytes, 0, 6);
  if (head6 === "GIF87a" || head6 === "GIF89a") return "image/gif";
  if (ascii(bytes, 0, 2) === "BM") return "image/bmp";
  if (startsWith(bytes, [0x49, 0x49, 0x2a, 0x00]) || startsWith(bytes, [0x4d, 0x4d, 0x00, 0x2a])) {
    return "image/tiff";
  }
  if (ascii(bytes, 4, 8) === "ftyp" && HEIF_BRANDS.has(ascii(bytes, 8, 12))) {
    return HEIC_BRANDS.has(ascii(bytes, 8, 12)) ? "image/heic" : "image/heif";
  }
  return null;
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
  const head = new Uint8Array(await file.slice(0, 16).arrayBuffer());
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
