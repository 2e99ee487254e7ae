/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/tests'],
  testMatch: ['**/*.test.ts'],
  // The soak and chaos runs take minutes: `npm run test:soak` (jest.soak.config.js) runs them.
  testPathIgnorePatterns: ['/node_modules/', '<rootDir>/tests/soak/'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
  // Integration tests spawn real nats-server and worker processes; two cores do not like many at once.
  maxWorkers: 2,
  // Generous: hooks start nats-server and worker processes, slow on two loaded cores.
  testTimeout: 60000,
  reporters: ['default', '<rootDir>/tests/summary-reporter.js'],
};
