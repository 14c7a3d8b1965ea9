// Calls to the front's API and the direct upload to S3.

import { CSRF_COOKIE, CSRF_HEADER } from "./csrf.js";

export class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

// Signed in, the session's tokens are HttpOnly cookies the browser sends by itself; a write
// also echoes the CSRF cookie, which only a page of this site can read, in a header.
function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === CSRF_COOKIE) return decodeURIComponent(value.join("="));
  }
  return "";
}

// Set at sign-in and cleared at sign-out, with the same lifetime as the session itself.
export function hasSessionCookie() {
  return csrfToken() !== "";
}

// Called on a 401 with no retry yet; it answers whether the session was renewed.
let renewSession = null;
export function onUnauthorized(handler) {
  renewSession = handler;
}

async function jsonRequest(url, options = {}, { retry = true } = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if ((options.method || "GET") !== "GET") {
    const token = csrfToken();
    if (token) headers[CSRF_HEADER] = token;
  }
  let response;
  try {
    response = await fetch(url, { ...options, headers, credentials: "same-origin" });
  } catch {
    throw new ApiError("network", "the server could not be reached", 0);
  }
  if (response.status === 401 && retry && renewSession && await renewSession()) {
    return jsonRequest(url, options, { retry: false });
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // An error page from a proxy, say, or no body at all; the status still tells.
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(error.code || `http_${response.status}`,
      error.message || response.statusText, response.status);
  }
  return body;
}

// The session: none of these retries on a 401, which is their answer to "signed in?".
export function getSession() {
  return jsonRequest("/api/session", {}, { retry: false });
}

export function signIn(username, password) {
  return jsonRequest("/api/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  }, { retry: false });
}

export function refreshSession() {
  return jsonRequest("/api/session/refresh", { method: "POST" }, { retry: false });
}

export function signOut() {
  return jsonRequest("/api/session", { method: "DELETE" }, { retry: false });
}

export function getConfig() {
  return jsonRequest("/api/config");
}

export function createUpload(file, contentType) {
  return jsonRequest("/api/uploads", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ filename: file.name || "pasted image", content_type: contentType,
      size: file.size }),
  });
}

export function createImport(url) {
  return jsonRequest("/api/imports", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ url }),
  });
}

// Removes the photo, its result and all derived from it; answers alike if it was gone already.
export async function deleteResult(imageId) {
  await jsonRequest(`/api/results/${encodeURIComponent(imageId)}`, { method: "DELETE" });
}

export function resultUrl(imageId) {
  return `/api/results/${encodeURIComponent(imageId)}`;
}

export function getResult(resultUrl) {
  return jsonRequest(resultUrl);
}

export function listResults({ label = "", cursor = "", limit = 12 } = {}) {
  const params = new URLSearchParams({ limit: String(limit) });
  if (label) params.set("label", label);
  if (cursor) params.set("cursor", cursor);
  return jsonRequest(`/api/results?${params}`);
}

// Search words (labels, categories, synonyms) that start with what the user typed.
export function suggestWords(prefix) {
  return jsonRequest(`/api/words?${new URLSearchParams({ prefix, limit: "12" })}`);
}

// POST the presigned fields and then the file to S3. XMLHttpRequest, not fetch, because only
// it reports upload progress. An AbortSignal cancels the POST.
export function uploadToS3(upload, file, contentType, onProgress, signal = null) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const [name, value] of Object.entries(upload.fields)) form.append(name, value);
    // S3 ignores every field after the file, so it goes last.
    form.append("file", new Blob([file], { type: contentType }), file.name || "image");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", upload.url);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1);
        resolve();
        return;
      }
      const code = /<Code>([^<]+)<\/Code>/.exec(xhr.responseText || "");
      reject(new ApiError(code ? `s3_${code[1]}` : `s3_http_${xhr.status}`,
        `storage answered ${xhr.status}`, xhr.status));
    });
    // A CORS refusal looks like this too: the browser hides why.
    xhr.addEventListener("error", () => reject(new ApiError("s3_network",
      "the storage service could not be reached", 0)));
    xhr.addEventListener("abort", () => reject(new ApiError("aborted", "upload cancelled", 0)));
    if (signal) {
      if (signal.aborted) {
        reject(new ApiError("aborted", "upload cancelled", 0));
        return;
      }
      signal.addEventListener("abort", () => xhr.abort(), { once: true });
    }
    xhr.send(form);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Poll a result URL until it is no longer pending: 0.5 s at first, then longer waits up to
// 5 s, so a slow first model load costs few requests. Network errors back off the same way.
export async function waitForResult(resultUrl, { onPending, maxWaitMs = 10 * 60 * 1000 } = {}) {
  const started = Date.now();
  let delay = 500;
  for (;;) {
    try {
      const result = await getResult(resultUrl);
      if (result.status !== "pending") return result;
      if (onPending) onPending(result);
    } catch (error) {
      // 404 right after an upload can only be a race with the pending write; keep trying.
      if (!(error instanceof ApiError) || (error.status >= 400 && error.status < 500
          && error.status !== 404 && error.status !== 429)) {
        throw error;
      }
    }
    if (Date.now() - started > maxWaitMs) {
      throw new ApiError("still_pending", "no result yet", 0);
    }
    await sleep(delay);
    delay = Math.min(delay * 1.5, 5000);
  }
}
