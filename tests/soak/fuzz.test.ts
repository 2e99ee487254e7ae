/** The long fuzz run of `npm run test:soak`: 10,000 cases (docs/security.md). */
import { fuzzSuite } from '../helpers/fuzz';

fuzzSuite(10_000);
