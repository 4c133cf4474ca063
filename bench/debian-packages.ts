/**
 * Debian packages a benchmark needs beyond scripts/bootstrap's list
 * (debootstrap for the realistic image; Go and stargz-snapshotter's library
 * to build its daemon), installed the way scripts/bootstrap installs its own:
 * only what is missing, with apt-get, as root (or through sudo).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

async function installed(name: string): Promise<boolean> {
  try {
    const { stdout } = await run('dpkg-query', ['-W', '-f=${Status}', name]);
    return stdout.includes('install ok installed');
  } catch {
    return false;
  }
}

/** Installs those of `names` that are not installed yet; `why` says what for (in the log line and in errors). */
export async function ensureDebianPackages(names: string[], why: string): Promise<void> {
  const missing: string[] = [];
  for (const name of names) if (!(await installed(name))) missing.push(name);
  if (missing.length === 0) return;
  process.stderr.write(`bench: installing Debian packages for ${why}: ${missing.join(' ')}\n`);
  const sudo = process.getuid?.() === 0 ? [] : ['sudo'];
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const apt = async (args: string[]): Promise<void> => {
    const argv = [...sudo, 'apt-get', ...args];
    try {
      await run(argv[0]!, argv.slice(1), { env, maxBuffer: 64 << 20 });
    } catch (err) {
      const e = err as Error & { stderr?: string; stdout?: string };
      throw new Error(`bench: ${why}: ${argv.join(' ')} failed: ${(e.stderr || e.stdout || e.message).trim().slice(-2000)}`);
    }
  };
  await apt(['update', '-qq']);
  await apt(['install', '-y', '-qq', '--no-install-recommends', ...missing]);
}
