// Reason codes from the processor and the API, in plain words for the person who sent the file.

import { CONTENT_TYPES, formatBytes, typeNames } from "./checks.js";

export const ACCEPTED = typeNames(CONTENT_TYPES);

// Why the processor failed an image (the result's error.code).
function processingMessages(config) {
  const limit = config ? formatBytes(config.max_upload_bytes) : "the size limit";
  const pixels = config ? `${Math.round(config.max_pixels / 1e6)} megapixels` : "the limit";
  return {
    empty_object: "The file arrived empty, so there was nothing to look at.",
    not_an_image: "This file is not an image, whatever its name says.",
    corrupt_image: "The image is damaged or cut short, so it cannot be read.",
    unsupported_format: `This kind of image is not supported. Use ${ACCEPTED}.`,
    too_large: `The image is larger than ${limit}, the most we accept.`,
    too_many_pixels: `The image has more pixels than we process (over ${pixels}). `
      + "A smaller copy will work.",
    object_missing: "The file disappeared from storage before it could be looked at. "
      + "Please send it again.",
    access_denied: "The service was not allowed to read the file from storage. "
      + "Please try again later.",
    decode_error: "The image could not be decoded, although it looks like an image file.",
    never_uploaded: "The photo was never sent, so there is nothing to look at. "
      + "Please send it again.",
    model_error: "The recognition model could not look at this image. Please try again later.",
  };
}

// Why the API, S3 or the network refused an upload or an import.
function requestMessages(config) {
  const limit = config ? formatBytes(config.max_upload_bytes) : "the size limit";
  return {
    network: "The server could not be reached. Check your connection and try again.",
    s3_network: "The storage service could not be reached, so the file was not sent.",
    s3_AccessDenied: "Storage refused the upload; the upload link may have expired. "
      + "Please try again.",
    s3_EntityTooLarge: `Storage refused the file: it is larger than ${limit}.`,
    s3_EntityTooSmall: "Storage refused the file because it is empty.",
    unsupported_content_type: `This kind of file is not accepted. Use ${ACCEPTED}.`,
    too_large: `The image is larger than ${limit}, the most we accept.`,
    invalid_filename: "The file name cannot be used; rename the file and try again.",
    backend_unavailable: "The service is busy or its storage is unavailable. "
      + "Try again in a moment.",
    unauthorized: "You are signed out. Sign in again, then send the photo again.",
    session_expired: "You are signed out. Sign in again, then send the photo again.",
    csrf_failed: "This page's sign-in is out of date. Reload the page and try again.",
    quota_exceeded: "You have added as many photos as one day allows. Try again tomorrow.",
    still_pending: "No result after 10 minutes: the recognition service may be down. "
      + "The photo will appear in Recent results once it is done.",
    // Imports
    invalid_url: "That is not a web address that can be imported: use an http:// or "
      + "https:// link to an image.",
    forbidden_address: "That address leads into a private network, which imports are not "
      + "allowed to reach.",
    unknown_host: "The server in that address could not be found.",
    fetch_timeout: "The server at that address took too long to send the image.",
    fetch_failed: "The image could not be downloaded from that address.",
    too_many_redirects: "That address redirects too many times.",
    not_an_image: `That address does not lead to an image (${ACCEPTED}).`,
    empty_image: "That address sent back nothing.",
    invalid_json: "The page sent something the server did not understand. Reload the page.",
    missing_field: "The page sent an incomplete request. Reload the page and try again.",
    invalid_size: "The file's size could not be read. Choose the file again.",
    rate_limited: "Too many photos at once from here. Wait a moment, then try again.",
    not_found: "That photo is not there any more, or it is not yours.",
    aborted: "You cancelled the upload.",
  };
}

export function processingMessage(code, config) {
  return processingMessages(config)[code]
    || "The image could not be classified.";
}

export function requestMessage(error, config) {
  const known = requestMessages(config)[error.code];
  if (known) return known;
  if (error.status >= 500) return "Something went wrong on our side. Please try again.";
  if (String(error.code).startsWith("s3_")) {
    return "Storage did not take the file. Please try again.";
  }
  return "The server did not accept this. Please try again, or send another photo.";
}

// Why signing in did not work; one message for a wrong password and an unknown name alike.
export function signInMessage(error) {
  switch (error.code) {
    case "sign_in_failed":
      return "That username and password do not match. Check both and try again.";
    case "too_many_attempts":
      return "Too many failed attempts from here. Wait a few minutes, then try again.";
    case "new_password_required":
      return "This account needs a new password before it can sign in. "
        + "Ask the person who runs this service to set one.";
    case "network":
      return "The server could not be reached. Check your connection and try again.";
    default:
      return error.status >= 500 ? "Signing in is not possible right now. Try again shortly."
        : `Signing in was refused: ${error.message}.`;
  }
}
