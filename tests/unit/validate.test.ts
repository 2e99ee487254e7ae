/** validateChatRequest (src/controller/validate.ts): every bad field is a 400 naming it. */
import { validateChatRequest } from '../../src/controller/validate';
import { isRouterError, type RouterError } from '../../src/errors';

const MSG = [{ role: 'user', content: 'hi' }];
const base = { model: 'm', messages: MSG };

function rejection(body: unknown): RouterError {
  try {
    validateChatRequest(body);
  } catch (e) {
    if (isRouterError(e)) return e;
    throw e;
  }
  throw new Error(`expected ${JSON.stringify(body)} to be rejected`);
}

test.each<[string, unknown, string]>([
  ['a body that is null', null, 'body'],
  ['a body that is a list', [base], 'body'],
  ['a body that is a string', 'hello', 'body'],
  ['a missing model', { messages: MSG }, 'model'],
  ['an empty model', { ...base, model: '  ' }, 'model'],
  ['a numeric model', { ...base, model: 42 }, 'model'],
  ['missing messages', { model: 'm' }, 'messages'],
  ['messages that are an object', { ...base, messages: { role: 'user' } }, 'messages'],
  ['empty messages', { ...base, messages: [] }, 'messages'],
  ['a message that is a string', { ...base, messages: ['hi'] }, 'messages[0]'],
  ['an unknown role', { ...base, messages: [{ role: 'wizard', content: 'x' }] }, 'messages[0].role'],
  ['a missing role in the second message', { ...base, messages: [...MSG, { content: 'x' }] }, 'messages[1].role'],
  ['numeric content', { ...base, messages: [{ role: 'user', content: 5 }] }, 'messages[0].content'],
  ['a content part without a type', { ...base, messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }, { image_url: {} }] }] }, 'messages[0].content[1]'],
  ['a user message without content', { ...base, messages: [{ role: 'user' }] }, 'messages[0].content'],
  ['a tool result without tool_call_id', { ...base, messages: [...MSG, { role: 'tool', content: '42' }] }, 'messages[1].tool_call_id'],
  ['tool_calls on a user message', { ...base, messages: [{ role: 'user', content: 'x', tool_calls: [{ id: 'c' }] }] }, 'messages[0].tool_calls'],
  ['tool_calls that are not a list', { ...base, messages: [{ role: 'assistant', content: null, tool_calls: {} }] }, 'messages[0].tool_calls'],
  ['tools that are not a list', { ...base, tools: { type: 'function' } }, 'tools'],
  ['a text part without text', { ...base, messages: [{ role: 'user', content: [{ type: 'text' }] }] }, 'messages[0].content[0]'],
  ['a string stream flag', { ...base, stream: 'yes' }, 'stream'],
  ['max_tokens 0', { ...base, max_tokens: 0 }, 'max_tokens'],
  ['fractional max_tokens', { ...base, max_tokens: 1.5 }, 'max_tokens'],
  ['string max_tokens', { ...base, max_tokens: '10' }, 'max_tokens'],
  ['negative max_completion_tokens', { ...base, max_completion_tokens: -1 }, 'max_completion_tokens'],
  ['max_tokens 1e308', { ...base, max_tokens: 1e308 }, 'max_tokens'],
  ['max_tokens above a 32-bit int', { ...base, max_tokens: 2 ** 31 }, 'max_tokens'],
  ['max_completion_tokens 1e308', { ...base, max_completion_tokens: 1e308 }, 'max_completion_tokens'],
  ['a bad max_tokens next to a good max_completion_tokens', { ...base, max_completion_tokens: 5, max_tokens: 1e308 }, 'max_tokens'],
  ['top_p 2', { ...base, top_p: 2 }, 'top_p'],
  ['negative top_p', { ...base, top_p: -0.5 }, 'top_p'],
  ['string top_p', { ...base, top_p: '0.9' }, 'top_p'],
  ['frequency_penalty 3', { ...base, frequency_penalty: 3 }, 'frequency_penalty'],
  ['presence_penalty -2.5', { ...base, presence_penalty: -2.5 }, 'presence_penalty'],
  ['top_logprobs 21', { ...base, top_logprobs: 21 }, 'top_logprobs'],
  ['fractional top_logprobs', { ...base, top_logprobs: 1.5 }, 'top_logprobs'],
  ['seed 1e308', { ...base, seed: 1e308 }, 'seed'],
  ['fractional seed', { ...base, seed: 0.5 }, 'seed'],
  ['a string logprobs', { ...base, logprobs: 'yes' }, 'logprobs'],
  ['logit_bias that is a list', { ...base, logit_bias: [1] }, 'logit_bias'],
  ['a logit_bias of 101', { ...base, logit_bias: { '50256': 101 } }, 'logit_bias.50256'],
  ['temperature above 2', { ...base, temperature: 2.5 }, 'temperature'],
  ['negative temperature', { ...base, temperature: -0.1 }, 'temperature'],
  ['string temperature', { ...base, temperature: 'hot' }, 'temperature'],
  ['five stop strings', { ...base, stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'],
  ['a numeric stop', { ...base, stop: 7 }, 'stop'],
  ['a stop list with a number', { ...base, stop: ['a', 1] }, 'stop'],
  ['n of 0', { ...base, n: 0 }, 'n'],
  ['n of 129', { ...base, n: 129 }, 'n'],
  ['a string n', { ...base, n: '2' }, 'n'],
  ['stream_options that are a string', { ...base, stream_options: 'x' }, 'stream_options'],
  ['a string include_usage', { ...base, stream_options: { include_usage: 'yes' } }, 'stream_options.include_usage'],
  ['an empty session_id', { ...base, session_id: '' }, 'session_id'],
  ['a numeric session_id', { ...base, session_id: 5 }, 'session_id'],
  ['an overlong session_id', { ...base, session_id: 'x'.repeat(257) }, 'session_id'],
])('validate - %s is a 400 naming %p', (_what, body, param) => {
  const err = rejection(body);
  expect(err).toMatchObject({ code: 'REQUEST_VALIDATION_FAILED', status: 400, outcome: 'caller', param });
  expect(err.message).toContain(param);
  expect(err.toJSON().error).toMatchObject({ param, type: 'invalid_request_error', code: 'request_validation_failed', router_code: 'REQUEST_VALIDATION_FAILED' });
});

test('validate - a minimal body becomes a buffered wire request carrying the body as sent', () => {
  expect(validateChatRequest(base)).toEqual({
    request: { model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: false, body: base, endpoint: 'chat.completions', needs: ['chat'] },
    includeUsage: false,
    sessionId: undefined,
  });
});

test('validate - text content parts are joined into one string; null content is empty', () => {
  const { request } = validateChatRequest({
    ...base,
    messages: [
      { role: 'user', content: [{ type: 'text', text: 'Hello, ' }, { type: 'text', text: 'world' }] },
      { role: 'assistant', content: null },
    ],
  });
  expect(request.messages).toEqual([
    { role: 'user', content: 'Hello, world' },
    { role: 'assistant', content: '' },
  ]);
});

test('validate - every OpenAI role is accepted', () => {
  const roles = ['system', 'developer', 'user', 'assistant', 'tool'];
  const { request } = validateChatRequest({ ...base, messages: roles.map((role) => ({ role, content: role, ...(role === 'tool' ? { tool_call_id: 'c1' } : {}) })) });
  expect(request.messages.map((m) => m.role)).toEqual(roles);
});

test('validate - a tool-calling conversation passes whole; tools and image parts become needs', () => {
  const body = {
    ...base,
    messages: [
      { role: 'user', content: [{ type: 'text', text: 'What is in ' }, { type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA' } }] },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'f', arguments: '{}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '{"ok":true}' },
    ],
    tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    tool_choice: 'auto',
    n: 3,
  };
  const { request } = validateChatRequest(body);
  expect(request.body).toBe(body);
  expect(request.needs).toEqual(['chat', 'tools', 'vision']);
  expect(request.messages.map((m) => m.content)).toEqual(['What is in ', '', '{"ok":true}']);
});

test('validate - a stop string becomes a one-element list; a list is kept', () => {
  expect(validateChatRequest({ ...base, stop: '\n' }).request.stop).toEqual(['\n']);
  expect(validateChatRequest({ ...base, stop: ['a', 'b'] }).request.stop).toEqual(['a', 'b']);
  expect(validateChatRequest({ ...base, stop: null }).request.stop).toBeUndefined();
});

test('validate - max_completion_tokens wins over max_tokens', () => {
  expect(validateChatRequest({ ...base, max_tokens: 100, max_completion_tokens: 7 }).request.max_tokens).toBe(7);
  expect(validateChatRequest({ ...base, max_tokens: 100 }).request.max_tokens).toBe(100);
  expect(validateChatRequest({ ...base, max_tokens: null, max_completion_tokens: 9 }).request.max_tokens).toBe(9);
});

test('validate - stream, temperature, include_usage and session_id pass through', () => {
  const v = validateChatRequest({ ...base, stream: true, temperature: 0, stream_options: { include_usage: true }, session_id: 'chat-42' });
  expect(v.request.stream).toBe(true);
  expect(v.request.temperature).toBe(0);
  expect(v.includeUsage).toBe(true);
  expect(v.sessionId).toBe('chat-42');
});

test('validate - unknown fields stay in the body for v2 workers, out of the v1 subset', () => {
  const v = validateChatRequest({ ...base, user: 'u1', seed: 3, n: 1, frequency_penalty: 0, vendor_extension: { a: 1 } });
  expect(Object.keys(v.request).sort()).toEqual(['body', 'endpoint', 'messages', 'model', 'needs', 'stream']);
  expect(v.request.body).toMatchObject({ user: 'u1', seed: 3, frequency_penalty: 0, vendor_extension: { a: 1 } });
});

test('validate - numeric fields at the edges of their ranges are accepted', () => {
  expect(() =>
    validateChatRequest({
      ...base,
      max_tokens: 2_147_483_647,
      top_p: 1,
      temperature: 2,
      frequency_penalty: -2,
      presence_penalty: 2,
      top_logprobs: 20,
      seed: -1,
      logprobs: true,
      logit_bias: { '1': -100, '2': 100 },
    }),
  ).not.toThrow();
  expect(() => validateChatRequest({ ...base, top_p: 0, top_logprobs: 0, seed: Number.MAX_SAFE_INTEGER })).not.toThrow();
});
