// The lazyroot CLI compiled together with the benchmarks (bin/lazyroot.js, but from this
// build's own output directory): what the benchmarks time is the code they were built with.
import { main } from '../src/cli/main.js';

main(process.argv);
