export interface BenchContext {
  /** The repository clone (its sibling `../shared/` holds the peers' build files). */
  repoRoot: string;
  registryHost: string;
  cacheDir: string;
  workDir: string;
  lazyrootBin: string;
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
