// Who is signed in, and keeping it so: the access cookie is renewed a minute before it
// expires, and once more on any 401; when that fails, the page asks for sign-in again.

import { ApiError, getSession, hasSessionCookie, onUnauthorized, refreshSession, signIn,
  signOut } from "./api.js";

// Renew this long before the access token's expiry, so a request never carries a stale one.
const RENEW_EARLY_MS = 60 * 1000;
const MIN_DELAY_MS = 5 * 1000;
// setTimeout's largest delay; a longer one would fire at once.
const MAX_DELAY_MS = 2 ** 31 - 1;
// After a network failure the session may still be good: try again this much later.
const RETRY_MS = 30 * 1000;

export class Session {
  constructor({ onSignedIn, onSignedOut }) {
    this.onSignedIn = onSignedIn;
    this.onSignedOut = onSignedOut;
    this.user = null;
    this.timer = 0;
    this.renewing = null;
    onUnauthorized(() => this.renew());
  }

  // Signed in on an earlier visit? The CSRF cookie lives as long as the session can, so
  // without it there is no session to ask about (and no 401 in the console).
  async start() {
    if (!hasSessionCookie()) {
      this.signedOut("");
      return;
    }
    try {
      this.signedIn(await getSession());
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        // The access cookie expired while the page was closed; the refresh cookie may not have.
        await this.renew();
      } else {
        this.signedOut("Your sign-in could not be checked. Try signing in again.");
      }
    }
  }

  async signIn(username, password) {
    this.signedIn(await signIn(username, password));
  }

  // Every other page load starts signed out; nothing of this user stays in memory.
  async signOut() {
    clearTimeout(this.timer);
    try {
      await signOut();
    } finally {
      window.location.reload();
    }
  }

  // One renewal at a time, however many requests met a 401 together.
  renew() {
    if (!this.renewing) {
      this.renewing = refreshSession().then((body) => {
        this.signedIn(body);
        return true;
      }).catch((error) => {
        if (error.status === 0 && this.user) {
          // Offline for a moment, perhaps: the session may well be good still.
          this.schedule(RETRY_MS);
        } else if (error.status === 0) {
          this.signedOut("The server could not be reached. Check your connection and sign in.");
        } else {
          this.signedOut(this.user ? "Your session has ended. Sign in again to go on." : "");
        }
        return false;
      }).finally(() => {
        this.renewing = null;
      });
    }
    return this.renewing;
  }

  signedIn(body) {
    const previous = this.user;
    this.user = body.username;
    this.admin = Boolean(body.admin);
    const expires = Date.parse(body.expires_at);
    this.schedule(Number.isFinite(expires) ? expires - Date.now() - RENEW_EARLY_MS : RETRY_MS);
    this.onSignedIn(this, previous);
  }

  signedOut(message) {
    clearTimeout(this.timer);
    this.onSignedOut(message);
  }

  schedule(delay) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.renew(),
      Math.min(MAX_DELAY_MS, Math.max(MIN_DELAY_MS, delay)));
  }
}
