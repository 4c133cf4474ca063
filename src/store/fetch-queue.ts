/**
 * Lets a mount's fetch-ahead requests (an access profile's, a prioritized
 * region's) go out a few at a time, the ones needed soonest first, across
 * every blob of the mount.
 *
 * Why not all at once: a profile is dozens of requests, and a registry
 * serves them side by side, so each finishes about when the last does. The
 * workload's first read (a container's /etc/passwd) then waits for all of
 * them (measured: 100 ms of a 670 ms python start). In the order recorded,
 * a few at a time, the first reads' bytes arrive first.
 */
export class FetchQueue {
  private running = 0;
  private held = true;
  private readonly waiting: Array<{ rank: number; go: () => void }> = [];

  /** `limit`: requests under way at once (setLimit changes it). Nothing goes out before `start()`. */
  constructor(private limit: number) {}

  /** Requests under way at once from now on. */
  setLimit(limit: number): void {
    this.limit = limit;
    this.pump();
  }

  /**
   * A request's place in the queue, `rank` lower sooner (ties in the order
   * entered). `admitted` resolves when it may go out; it must call `done()`
   * once it is over (its bytes kept, or failed), which frees its place. `hurry()` puts it first: a read
   * is waiting for its bytes. When `signal` aborts first, `admitted` rejects
   * with its reason and the request leaves the queue.
   */
  enter(rank: number, signal?: AbortSignal): { admitted: Promise<void>; hurry(): void; done(): void } {
    let out = false;
    let finished = false;
    let go: () => void = () => undefined;
    let stop: (reason: unknown) => void = () => undefined;
    const admitted = new Promise<void>((resolve, reject) => {
      go = resolve;
      stop = reject;
    });
    const entry = {
      rank,
      go: () => {
        out = true;
        go();
      },
    };
    this.waiting.push(entry);
    const onAbort = () => {
      if (out || finished) return;
      finished = true;
      this.waiting.splice(this.waiting.indexOf(entry), 1);
      stop(signal!.reason);
    };
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    admitted.then(
      () => signal?.removeEventListener('abort', onAbort),
      () => undefined,
    );
    this.pump();
    return {
      admitted,
      hurry: () => {
        if (out || finished) return;
        entry.rank = -Infinity;
        this.pump();
      },
      done: () => {
        if (finished) return;
        finished = true;
        if (out) this.running--;
        else this.waiting.splice(this.waiting.indexOf(entry), 1);
        this.pump();
      },
    };
  }

  /** Lets requests go out: called once every request of the mount has entered, so the first out are the soonest. */
  start(): void {
    this.held = false;
    this.pump();
  }

  private pump(): void {
    while (!this.held && this.running < this.limit && this.waiting.length > 0) {
      let best = 0;
      for (let i = 1; i < this.waiting.length; i++) if (this.waiting[i]!.rank < this.waiting[best]!.rank) best = i;
      const [next] = this.waiting.splice(best, 1);
      this.running++;
      next!.go();
    }
  }
}
