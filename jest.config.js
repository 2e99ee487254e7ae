/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/tests'],
  testMatch: ['**/*.test.ts'],
  // Long chaos and soak runs: `npm run test:soak` (jest.soak.config.js), not every `npm test`.
  testPathIgnorePatterns: ['/node_modules/', '<rootDir>/tests/soak/'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
  // Integration tests spawn real nats-server and worker processes; two cores do not like many at once.
  maxWorkers: 2,
  testTimeout: 30000,
  reporters: ['default', '<rootDir>/tests/summary-reporter.js'],
};
