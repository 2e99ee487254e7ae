/**
 * RetryBudget: a controller-wide token bucket (gRPC retry throttling). Each failed attempt takes
 * a token, each success gives back `tokenRatio`; retries are allowed only while more than half the
 * tokens remain, so in an outage retries stop multiplying the load.
 */
export interface RetryBudgetOptions {
  /** Bucket size (default 100; 0 turns retries off). */
  maxTokens: number;
  /** Tokens a success gives back (default 0.1). */
  tokenRatio: number;
}

export class RetryBudget {
  private tokens: number;

  constructor(private readonly options: RetryBudgetOptions) {
    this.tokens = options.maxTokens;
  }

  get available(): number {
    return this.tokens;
  }

  onFailure(): void {
    this.tokens = Math.max(0, this.tokens - 1);
  }

  onSuccess(): void {
    this.tokens = Math.min(this.options.maxTokens, this.tokens + this.options.tokenRatio);
  }

  canRetry(): boolean {
    return this.tokens > this.options.maxTokens / 2;
  }
}
