export interface BenchContext {
  /** The repository clone (its sibling `../shared/` holds the peers' build files). */
  repoRoot: string;
  registryHost: string;
  cacheDir: string;
  workDir: string;
  lazyrootBin: string;
  /**
   * The `lazyroot` command as package.json installs it (bin/lazyroot: the
   * native front end, which hands a plain `run --lazy` to a warm standby and
   * runs this checkout's bin/lazyroot.js for everything else): what a user
   * types, so what the lazy-start rows time.
   */
  lazyrootCommand: string;
  rounds: number;
}

export interface BenchRow {
  scenario: string;
  tool: string;
  seconds: number;
  /** Time relative to the peer the scenario compares against (lower is better). */
  ratio: number;
  note: string;
}
