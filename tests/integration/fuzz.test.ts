/**
 * Seeded, time-bounded fuzzing of a real controller and real workers (docs/security.md): the short
 * slice every `npm test` runs (300 cases); `npm run test:soak` runs 10,000 (tests/soak/fuzz.test.ts).
 */
import { fuzzSuite } from '../helpers/fuzz';

fuzzSuite(300);
