// The official OpenAI clients, unchanged apart from baseURL and the CA, against a real
// `tutti serve` over TLS. Run by official_clients_test.sh, which starts the server and
// passes: TUTTI_BASE_URL (https://localhost:PORT/v1), TUTTI_CA (the development CA),
// TUTTI_MODEL, TUTTI_KEY and TUTTI_SPEECH (a 24 kHz PCM16 mono utterance followed by silence).
// Each check throws on failure; the process exits 1 on the first one.
import fs from 'node:fs';
import assert from 'node:assert/strict';
import OpenAI, { toFile } from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';
import { RealtimeAgent, RealtimeSession, OpenAIRealtimeWebSocket } from '@openai/agents-realtime';

const baseURL = process.env.TUTTI_BASE_URL;
const ca = fs.readFileSync(process.env.TUTTI_CA);
const model = process.env.TUTTI_MODEL;
const apiKey = process.env.TUTTI_KEY;
const speech = fs.readFileSync(process.env.TUTTI_SPEECH);
// NODE_EXTRA_CA_CERTS (set by the script) is how Node's fetch, which the SDK uses, trusts the CA.
const client = new OpenAI({ apiKey, baseURL, maxRetries: 0, timeout: 120000 });

const results = [];
async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push(name);
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e?.stack ?? e}`);
    process.exit(1);
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const withTimeout = (p, ms, what) => Promise.race([p, new Promise((_, no) => setTimeout(() => no(new Error(`${what}: no answer in ${ms} ms`)), ms))]);

await check('chat', async () => {
  const r = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Say hi' }], max_tokens: 8 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 8);
});

await check('chat streamed', async () => {
  const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Count' }], max_tokens: 8, stream: true,
                                                        stream_options: { include_usage: true } });
  let text = '', usage = null, chunks = 0;
  for await (const c of stream) {
    chunks++;
    text += c.choices[0]?.delta?.content ?? '';
    if (c.usage) usage = c.usage;
  }
  assert.ok(chunks > 1);
  assert.ok(usage && usage.completion_tokens > 0);
});

await check('chat .stream().finalChatCompletion()', async () => {
  const runner = client.chat.completions.stream({ model, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6 });
  let deltas = '';
  runner.on('content', (d) => { deltas += d; });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.content, deltas);
});

await check('legacy completions', async () => {
  const r = await client.completions.create({ model, prompt: 'Once upon', max_tokens: 5 });
  assert.equal(r.object, 'text_completion');
});

await check('responses', async () => {
  const r = await client.responses.create({ model, instructions: 'Be brief.', input: 'Hello there', max_output_tokens: 6, temperature: 0.5 });
  assert.equal(r.object, 'response');
  assert.ok(r.status === 'completed' || r.status === 'incomplete', r.status);
  assert.equal(typeof r.output_text, 'string');
  assert.ok(r.usage.input_tokens > 0 && r.usage.output_tokens > 0 && r.usage.output_tokens <= 6);
  // Continued from the store, with items as input.
  const next = await client.responses.create({ model, previous_response_id: r.id, max_output_tokens: 4,
                                               input: [{ role: 'user', content: [{ type: 'input_text', text: 'And again' }] }] });
  assert.ok(next.usage.input_tokens > r.usage.input_tokens, 'the earlier turn is part of the prompt');
  await assert.rejects(client.responses.create({ model, previous_response_id: 'resp_unknown', input: 'x' }),
                       (e) => e instanceof OpenAI.NotFoundError && e.code === 'previous_response_not_found');
});

await check('responses streamed', async () => {
  const stream = await client.responses.create({ model, input: 'Tell me', max_output_tokens: 6, stream: true });
  const types = [];
  let deltas = '', final = null;
  for await (const e of stream) {
    types.push(e.type);
    if (e.type === 'response.output_text.delta') deltas += e.delta;
    if (e.type === 'response.completed' || e.type === 'response.incomplete') final = e.response;
  }
  assert.equal(types[0], 'response.created');
  for (const t of ['response.in_progress', 'response.output_item.added', 'response.content_part.added', 'response.output_text.done',
                   'response.output_item.done']) assert.ok(types.includes(t), t);
  assert.ok(final && final.usage.output_tokens > 0);
  assert.equal(final.output[0].content[0].text, deltas);
  const s = client.responses.stream({ model, input: 'Once more', max_output_tokens: 4 });
  const done = await s.finalResponse();
  assert.equal(done.object, 'response');
});

await check('models list and retrieve', async () => {
  const list = await client.models.list();
  const ids = list.data.map((m) => m.id);
  assert.ok(ids.includes(model) && ids.includes('tts-1') && ids.includes('whisper-1'), ids.join(','));
  assert.equal((await client.models.retrieve(model)).id, model);
  assert.equal((await client.models.retrieve('gpt-4o-mini-tts')).id, 'gpt-4o-mini-tts');
  await assert.rejects(client.models.retrieve('no-such-model'), (e) => e instanceof OpenAI.NotFoundError);
});

await check('speech in every format, by an OpenAI model name', async () => {
  const magic = { mp3: [0x49, 0x44, 0x33], wav: [0x52, 0x49, 0x46, 0x46], flac: [0x66, 0x4c, 0x61, 0x43], opus: [0x4f, 0x67, 0x67, 0x53] };
  for (const format of ['mp3', 'opus', 'aac', 'flac', 'wav', 'pcm']) {
    const r = await client.audio.speech.create({ model: 'tts-1', voice: 'alloy', input: 'Hello.', response_format: format });
    const bytes = Buffer.from(await r.arrayBuffer());
    assert.ok(bytes.length > 100, `${format}: ${bytes.length} bytes (request ${r.headers.get('x-request-id')})`);
    if (magic[format]) assert.deepEqual([...bytes.subarray(0, magic[format].length)], magic[format], format);
    assert.ok(r.headers.get('x-request-id'), 'x-request-id');
  }
});

await check('speech as server-sent events', async () => {
  const r = await client.audio.speech.create({ model: 'gpt-4o-mini-tts', voice: 'alloy', input: 'Hello.', response_format: 'pcm', stream_format: 'sse' });
  const text = await r.text();
  const events = text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => JSON.parse(b.slice(6)));
  const audio = events.filter((e) => e.type === 'speech.audio.delta');
  assert.ok(audio.length > 0 && Buffer.from(audio[0].audio, 'base64').length > 0);
  assert.equal(events.at(-1).type, 'speech.audio.done');
  assert.ok(events.at(-1).usage.output_tokens > 0);
});

const wav = (pcm, rate) => {
  const h = Buffer.alloc(44);
  h.write('RIFF', 0); h.writeUInt32LE(36 + pcm.length, 4); h.write('WAVE', 8); h.write('fmt ', 12); h.writeUInt32LE(16, 16);
  h.writeUInt16LE(1, 20); h.writeUInt16LE(1, 22); h.writeUInt32LE(rate, 24); h.writeUInt32LE(rate * 2, 28); h.writeUInt16LE(2, 32);
  h.writeUInt16LE(16, 34); h.write('data', 36); h.writeUInt32LE(pcm.length, 40);
  return Buffer.concat([h, pcm]);
};

await check('transcriptions and translations', async () => {
  const file = await toFile(wav(speech, 24000), 'speech.wav', { type: 'audio/wav' });
  const t = await client.audio.transcriptions.create({ model: 'whisper-1', file });
  assert.equal(typeof t.text, 'string');
  assert.ok(t.usage.input_token_details.audio_tokens > 0);
  const verbose = await client.audio.transcriptions.create({ model: 'whisper-1', file: await toFile(wav(speech, 24000), 'a.wav'),
                                                             response_format: 'verbose_json' });
  assert.equal(verbose.task, 'transcribe');
  assert.ok(verbose.duration > 1);
  const plain = await client.audio.transcriptions.create({ model: 'whisper-1', file: await toFile(wav(speech, 24000), 'a.wav'), response_format: 'text' });
  assert.equal(typeof plain, 'string');
  const stream = await client.audio.transcriptions.create({ model: 'gpt-4o-transcribe', file: await toFile(wav(speech, 24000), 'a.wav'), stream: true });
  let done = null;
  for await (const e of stream) if (e.type === 'transcript.text.done') done = e;
  assert.ok(done && typeof done.text === 'string');
  const tr = await client.audio.translations.create({ model: 'whisper-1', file: await toFile(wav(speech, 24000), 'a.wav') });
  assert.equal(typeof tr.text, 'string');
  await assert.rejects(client.audio.transcriptions.create({ model: 'whisper-1', file: await toFile(Buffer.from('not audio at all'), 'x.wav') }),
                       (e) => e instanceof OpenAI.BadRequestError && e.param === 'file');
});

let png = null;
await check('image generation and edit', async () => {
  const g = await client.images.generate({ model: 'gpt-image-1', prompt: 'a red square', size: '64x64' });
  png = Buffer.from(g.data[0].b64_json, 'base64');
  assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]);
  const e = await client.images.edit({ model: 'gpt-image-1', image: await toFile(png, 'in.png', { type: 'image/png' }), prompt: 'make it blue', size: '64x64' });
  const out = Buffer.from(e.data[0].b64_json, 'base64');
  assert.deepEqual([...out.subarray(1, 4)], [0x50, 0x4e, 0x47]);
  assert.ok(e.usage.input_tokens > g.usage.input_tokens, 'the input image is part of the prompt');
});

await check('videos: create, retrieve, download, list, delete', async () => {
  let v = await client.videos.create({ model: 'sora-2', prompt: 'waves', seconds: '4', size: '720x1280' });
  assert.ok(v.id);
  for (let i = 0; i < 600 && (v.status === 'queued' || v.status === 'in_progress'); ++i) {
    await sleep(100);
    v = await client.videos.retrieve(v.id);
  }
  assert.equal(v.status, 'completed', JSON.stringify(v));
  const content = await client.videos.downloadContent(v.id);
  const mp4 = Buffer.from(await content.arrayBuffer());
  assert.equal(mp4.subarray(4, 8).toString(), 'ftyp');
  const list = await client.videos.list();
  assert.ok(list.data.some((x) => x.id === v.id));
  const del = await client.videos.delete(v.id);
  assert.equal(del.deleted, true);
  await assert.rejects(client.videos.retrieve(v.id), (e) => e instanceof OpenAI.NotFoundError);
});

await check('error classes', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }),
                       (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
  await assert.rejects(client.chat.completions.create({ model, messages: [] }), (e) => e instanceof OpenAI.BadRequestError);
  await assert.rejects(client.chat.completions.create({ model, messages: [{ role: 'user', content: 'word '.repeat(9000) }] }),
                       (e) => e instanceof OpenAI.BadRequestError && e.code === 'context_length_exceeded');
  const bad = new OpenAI({ apiKey: 'sk-wrong-key-000000', baseURL, maxRetries: 0 });
  await assert.rejects(bad.models.list(), (e) => e instanceof OpenAI.AuthenticationError && !!e.requestID);
});

await check('OpenAIRealtimeWS: a text turn', async () => {
  const rt = new OpenAIRealtimeWS({ model: 'gpt-realtime', options: { ca } }, client);
  const events = [], errors = [];
  const done = new Promise((resolve) => {
    rt.on('event', (e) => events.push(e));
    rt.on('error', (e) => { errors.push(e?.error ?? e?.message ?? String(e)); resolve(null); });
    rt.on('response.done', resolve);
  });
  await new Promise((r, no) => { rt.socket.once('open', r); rt.socket.once('error', no); });
  rt.send({ type: 'session.update', session: { type: 'realtime', output_modalities: ['text'], max_output_tokens: 8 } });
  rt.send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Hello' }] } });
  rt.send({ type: 'response.create' });
  const r = await withTimeout(done, 60000, 'text turn');
  rt.close();
  assert.deepEqual(errors, [], JSON.stringify(errors));
  const types = events.map((e) => e.type);
  assert.equal(types[0], 'session.created');
  for (const t of ['conversation.item.added', 'conversation.item.done', 'response.output_item.added', 'response.content_part.added',
                   'response.output_text.delta', 'response.output_item.done']) assert.ok(types.includes(t), t);
  assert.ok(r.response.usage.output_tokens > 0 && r.response.usage.output_tokens <= 8);
  assert.equal(r.response.output[0].content[0].type, 'output_text');
});

// 20 ms of 24 kHz PCM16 at a time, at the pace a microphone sends it.
async function speak(send) {
  const chunk = 960;
  const t0 = Date.now();
  for (let i = 0, n = 0; i < speech.length; i += chunk, ++n) {
    send(speech.subarray(i, i + chunk).toString('base64'));
    const wait = t0 + (n + 1) * 20 - Date.now();
    if (wait > 0) await sleep(wait);
  }
}

await check('OpenAIRealtimeWS: a voice turn at real-time pace', async () => {
  const rt = new OpenAIRealtimeWS({ model: 'gpt-realtime', options: { ca } }, client);
  const types = [];
  let audioBytes = 0;
  const errors = [];
  const done = new Promise((resolve) => {
    rt.on('event', (e) => types.push(e.type));
    rt.on('error', (e) => { errors.push(e?.error ?? e?.message ?? String(e)); resolve(null); });
    rt.on('response.output_audio.delta', (e) => { audioBytes += Buffer.from(e.delta, 'base64').length; });
    rt.on('response.done', resolve);
  });
  await new Promise((r, no) => { rt.socket.once('open', r); rt.socket.once('error', no); });
  rt.send({ type: 'session.update', session: { type: 'realtime', output_modalities: ['audio'], max_output_tokens: 100,
                                               audio: { input: { format: { type: 'audio/pcm', rate: 24000 },
                                                                 turn_detection: { type: 'server_vad', silence_duration_ms: 400 } } } } });
  await speak((audio) => rt.send({ type: 'input_audio_buffer.append', audio }));
  const r = await withTimeout(done, 90000, 'voice turn');
  rt.close();
  assert.deepEqual(errors, [], JSON.stringify(errors) + ' after ' + types.join(','));
  for (const t of ['input_audio_buffer.speech_started', 'input_audio_buffer.speech_stopped', 'input_audio_buffer.committed',
                   'conversation.item.added', 'response.output_audio.done', 'output_audio_buffer.started']) assert.ok(types.includes(t), t);
  assert.ok(audioBytes > 0, 'audio came back');
  assert.equal(r.response.output[0].content[0].type, 'output_audio');
});

await check('agents SDK RealtimeSession: history and final text', async () => {
  const agent = new RealtimeAgent({ name: 'Assistant', instructions: 'Be brief.' });
  // The agents SDK's WebSocket transport: the URL (ws or wss) and, for Node, the CA through
  // NODE_EXTRA_CA_CERTS. Its default session config asks for semantic_vad, which tutti maps.
  const transport = new OpenAIRealtimeWebSocket({ url: baseURL.replace(/^http/, 'ws') + '/realtime?model=gpt-realtime' });
  const session = new RealtimeSession(agent, { transport, model: 'gpt-realtime', config: { outputModalities: ['text'] } });
  const errors = [];
  session.on('error', (e) => errors.push(e));
  await session.connect({ apiKey });
  const turnDone = new Promise((resolve) => session.transport.on('turn_done', resolve));
  session.sendMessage('Hello there');
  const turn = await withTimeout(turnDone, 60000, 'agents turn');
  await sleep(200);
  const history = session.history;
  session.close();
  assert.deepEqual(errors, []);
  const user = history.find((i) => i.type === 'message' && i.role === 'user');
  const assistant = history.find((i) => i.type === 'message' && i.role === 'assistant');
  assert.ok(user, 'the user message is in the history: ' + JSON.stringify(history));
  assert.ok(assistant, 'the answer is in the history');
  const text = assistant.content.map((c) => c.text ?? c.transcript ?? '').join('');
  assert.ok(text.length > 0, 'the final text is filled: ' + JSON.stringify(assistant));
  assert.ok(turn.response.output.length === 1);
});

console.log(`${results.length} checks passed`);
process.exit(0);
