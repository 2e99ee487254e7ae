/**
 * `npm run test:soak`: the long soak and chaos runs (tests/soak/), kept out of `npm test`.
 * CI (.ci/run) runs them once, on the machine's Node.
 */
const base = require('./jest.config');

/** @type {import('jest').Config} */
module.exports = {
  ...base,
  testPathIgnorePatterns: ['/node_modules/'],
  roots: ['<rootDir>/tests/soak'],
  maxWorkers: 1,
  testTimeout: 180000,
};
