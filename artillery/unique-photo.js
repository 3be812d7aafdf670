// Artillery processor: gives every virtual user a photo with bytes of its own.
//
// pixpool deduplicates uploads (the same bytes with the same presets return the
// earlier job, with 200 once it is done), so posting the four photos of
// test-data/ over and over would measure the dedup index, not uploads and
// image processing. `uniquePhoto` copies the virtual user's photo (the `photo`
// payload field, relative to the scenario file) to a temp file with 16 random
// bytes hidden where decoders ignore them — a JPEG comment segment after SOI,
// an unknown RIFF chunk at the end of a WebP — and sets `uniquePhoto` to its
// path for `fromFile`. `removePhoto` (afterResponse of the upload) deletes it;
// whatever is left when the process exits is deleted then.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');

/** Originals, read once per process. */
const originals = new Map();
/** Temp files not yet removed. */
const live = new Set();

function original(file) {
  let bytes = originals.get(file);
  if (!bytes) {
    bytes = fs.readFileSync(file);
    originals.set(file, bytes);
  }
  return bytes;
}

function tagged(bytes) {
  const tag = Buffer.from('pixpool-artillery ' + crypto.randomBytes(16).toString('hex'));
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) {
    // JPEG: SOI, then a COM segment (FF FE, big-endian length including itself).
    const com = Buffer.alloc(4);
    com.writeUInt16BE(0xfffe, 0);
    com.writeUInt16BE(tag.length + 2, 2);
    return Buffer.concat([bytes.subarray(0, 2), com, tag, bytes.subarray(2)]);
  }
  if (bytes.toString('latin1', 0, 4) === 'RIFF' && bytes.toString('latin1', 8, 12) === 'WEBP') {
    // WebP: an unknown chunk at the end (even-sized, so no padding), and the
    // RIFF size updated to include it.
    const head = Buffer.alloc(8);
    head.write('XPIX', 0, 'latin1');
    head.writeUInt32LE(tag.length, 4);
    const out = Buffer.concat([bytes, head, tag]);
    out.writeUInt32LE(out.length - 8, 4);
    return out;
  }
  // Anything else goes as it is (and may be deduplicated).
  return bytes;
}

function uniquePhoto(context, events, done) {
  try {
    const scenarioDir = path.dirname(context.vars.$scenarioFile || path.join(__dirname, 'x'));
    const source = path.resolve(scenarioDir, String(context.vars.photo));
    const file = path.join(
      os.tmpdir(),
      `pixpool-artillery-${process.pid}-${crypto.randomBytes(8).toString('hex')}${path.extname(source)}`
    );
    fs.writeFileSync(file, tagged(original(source)));
    live.add(file);
    context.vars.uniquePhoto = file;
    return done();
  } catch (err) {
    return done(err);
  }
}

function removePhoto(req, res, context, events, done) {
  const file = context.vars.uniquePhoto;
  if (file && live.delete(file)) {
    fs.unlink(file, () => done());
  } else {
    done();
  }
}

process.on('exit', () => {
  for (const file of live) {
    try {
      fs.unlinkSync(file);
    } catch (_) {
      // already gone
    }
  }
});

module.exports = { uniquePhoto, removePhoto };
