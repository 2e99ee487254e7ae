/** `npm run test:soak`: the long chaos and soak runs under tests/soak/. */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const base = require('./jest.config.js');

/** @type {import('jest').Config} */
module.exports = { ...base, testPathIgnorePatterns: ['/node_modules/'], roots: ['<rootDir>/tests/soak'], maxWorkers: 1, testTimeout: 180000 };
