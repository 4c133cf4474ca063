/** The only place that writes to stdout: commands hand it text or JSON. */
export interface Output {
  text(line: string): void;
  json(value: unknown): void;
}

export const stdoutOutput: Output = {
  text(line) {
    process.stdout.write(`${line}\n`);
  },
  json(value) {
    process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  },
};
