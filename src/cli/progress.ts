import cliProgress from 'cli-progress';
import { shortDigest } from '../oci/digest.js';
import type { PullEvent } from '../store/pull.js';
import { formatBytes } from './format.js';

export interface ProgressSink {
  onEvent(event: PullEvent): void;
  stop(): void;
}

const silent: ProgressSink = { onEvent: () => undefined, stop: () => undefined };

/**
 * One bar per layer (bytes, rate) on a TTY; nothing when quiet, when output is
 * JSON, or when stderr is not a terminal (logs and pipes stay clean).
 */
export function createPullProgress(options: { quiet: boolean; json: boolean; stream?: NodeJS.WriteStream }): ProgressSink {
  const stream = options.stream ?? process.stderr;
  if (options.quiet || options.json || !stream.isTTY) return silent;
  const multibar = new cliProgress.MultiBar(
    {
      stream,
      format: ' {layer} [{bar}] {percentage}% {have}/{size} {rate}',
      barsize: 24,
      hideCursor: true,
      clearOnComplete: false,
      stopOnComplete: false,
      autopadding: true,
      fps: 10,
    },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<string, { bar: cliProgress.SingleBar; done: number; total: number; started: number }>();
  const payload = (s: { done: number; total: number; started: number }, digest: string) => ({
    layer: shortDigest(digest),
    have: formatBytes(s.done),
    size: formatBytes(s.total),
    rate: `${formatBytes(s.done / Math.max(0.001, (Date.now() - s.started) / 1000))}/s`,
  });
  return {
    onEvent(event) {
      switch (event.type) {
        case 'blob-start': {
          const s = { bar: undefined as unknown as cliProgress.SingleBar, done: 0, total: event.size, started: Date.now() };
          s.bar = multibar.create(Math.max(1, event.size), 0, payload(s, event.digest));
          bars.set(event.digest, s);
          break;
        }
        case 'blob-progress': {
          const s = bars.get(event.digest);
          if (!s) break;
          s.done += event.bytes;
          s.bar.update(s.done, payload(s, event.digest));
          break;
        }
        case 'blob-done': {
          const s = bars.get(event.digest);
          if (!s) break;
          s.done = s.total;
          s.bar.update(s.total, { ...payload(s, event.digest), rate: event.downloaded ? payload(s, event.digest).rate : 'already stored' });
          break;
        }
        default:
          break;
      }
    },
    stop() {
      multibar.stop();
    },
  };
}
