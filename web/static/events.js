// Results as they land: one EventSource on /api/events (the URL /api/config gives) instead of
// a poll per upload. While the stream is open a card waits for its result's event; when the
// stream drops, every card still waiting falls back to polling, and the browser reconnects
// by itself, resuming with Last-Event-ID.

export class ResultStream {
  constructor(url) {
    this.url = url;
    this.source = null;
    this.open = false;
    // Results seen since the stream opened, in case one lands before its card waits for it.
    this.seen = new Map();
    this.waiting = new Map();
  }

  start() {
    if (this.source || !this.url || !window.EventSource) return;
    const source = new EventSource(this.url, { withCredentials: true });
    this.source = source;
    source.addEventListener("open", () => { this.open = true; });
    source.addEventListener("result", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      this.seen.set(event.image_id, event);
      const waiter = this.waiting.get(event.image_id);
      if (waiter) {
        this.waiting.delete(event.image_id);
        waiter.resolve(event);
      }
    });
    source.addEventListener("error", () => {
      this.open = false;
      const waiters = [...this.waiting.values()];
      this.waiting.clear();
      for (const waiter of waiters) waiter.fallBack();
      if (source.readyState === EventSource.CLOSED) this.source = null;
    });
  }

  stop() {
    if (this.source) this.source.close();
    this.source = null;
    this.open = false;
  }

  // The result of an image from the stream, or from `poll` when there is no stream or it drops.
  wait(imageId, poll) {
    if (!this.open) return poll();
    const seen = this.seen.get(imageId);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      this.waiting.set(imageId, {
        resolve,
        fallBack: () => poll().then(resolve, reject),
      });
    });
  }
}
