import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60000,
    hookTimeout: 60000,
    // suites start real servers and child processes; keep the 2-core machine from thrashing
    fileParallelism: true,
    maxWorkers: 2,
    // the JSON file lets .ci/run print a plain "N passed, N failed" closing line
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest-results.json' },
  },
});
