import { defineConfig } from 'vitest/config';

// `npm run chaos`: the bounded chaos run, not part of `npm test`
export default defineConfig({
  test: {
    // node kills (chaos.run.ts) and the network nemesis (chaos-net.run.ts); one of them: npm run chaos -- chaos-net
    include: ['test/chaos.run.ts', 'test/chaos-net.run.ts'],
    fileParallelism: false,
    testTimeout: 900000,
    hookTimeout: 60000,
  },
});
