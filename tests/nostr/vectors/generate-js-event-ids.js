// Generates js-event-ids.json (run: node generate-js-event-ids.js > js-event-ids.json): NIP-01 ids
// computed the way JavaScript clients and Hypertuna workers do, sha256(JSON.stringify([0,pubkey,...])).
const crypto = require('crypto');
const pubkey = '79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798';
const cases = [
  { kind: 1, created_at: 1700000000, tags: [], content: '' },
  { kind: 1, created_at: 1700000001, tags: [['e', 'a'.repeat(64), 'wss://r.example/'], ['t', 'nostr']], content: 'hello, world' },
  { kind: 1, created_at: 1700000002, tags: [], content: 'line\nbreak "quote" back\\slash \r\t\b\f end' },
  { kind: 1, created_at: 1700000003, tags: [['alt', 'ctl \u0000\u0001\u001f\u007f']], content: 'controls \u0000 \u0001 \u000b \u000e \u001b \u001f DEL\u007f' },
  { kind: 1, created_at: 1700000004, tags: [['t', 'café']], content: 'unicode café ☃ 日本語 😀🤙 \u2028\u2029 </script> / \u00a0' },
  { kind: 30023, created_at: 0, tags: [['d', 'a:b:c'], ['title', '\u{10FFFF}']], content: '{"json":"in content"}' },
  { kind: 65535, created_at: 9999999999, tags: [['x'], ['y', '', '']], content: '\\u0041 is not A' },
];
const out = cases.map(c => {
  const serialized = JSON.stringify([0, pubkey, c.created_at, c.kind, c.tags, c.content]);
  return { pubkey, ...c, serialized, id: crypto.createHash('sha256').update(serialized, 'utf8').digest('hex') };
});
process.stdout.write(JSON.stringify({
  generator: 'node ' + process.version + ': sha256(JSON.stringify([0,pubkey,created_at,kind,tags,content]))',
  cases: out,
}, null, 2) + '\n');
