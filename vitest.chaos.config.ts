import { defineConfig } from 'vitest/config';

// `npm run chaos`: the bounded chaos run, not part of `npm test`
export default defineConfig({
  test: {
    include: ['test/system/chaos.run.ts'],
    testTimeout: 900000,
    hookTimeout: 60000,
  },
});
