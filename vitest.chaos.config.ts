import { defineConfig } from 'vitest/config';

// `npm run chaos`: the bounded chaos runs, not part of `npm test`
export default defineConfig({
  test: {
    // node kills (chaos.run.ts) and the network nemesis (chaos-net.run.ts); one of them: npm run chaos -- chaos-net
    include: ['test/system/chaos.run.ts', 'test/system/chaos-net.run.ts'],
    fileParallelism: false,
    testTimeout: 900000,
    hookTimeout: 60000,
  },
});
