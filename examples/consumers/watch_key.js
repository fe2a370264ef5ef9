// A Node consumer that reads its API key from the file named by an `*_FILE` variable and
// picks up a rotated key without a restart. keysync replaces the file atomically (rename),
// so a stat before each use is enough; `fs.watch` would lose the file across renames.
//
//   OPENAI_API_KEY_FILE=/run/keys/openai.key node watch_key.js
"use strict";
const fs = require("node:fs");
const crypto = require("node:crypto");

/** The key in `path`, re-read only when the file was replaced or changed. */
class KeyFile {
  constructor(path) {
    this.path = path;
    this.stamp = null;
    this.key = null;
  }

  /** The current key; call before each request (one stat). */
  get() {
    const st = fs.statSync(this.path, { bigint: true });
    const stamp = `${st.ino}:${st.mtimeNs}:${st.size}`;
    if (stamp !== this.stamp) {
      const key = fs.readFileSync(this.path, "utf8").trim();
      if (!key) throw new Error(`${this.path} is empty`);
      this.key = key;
      this.stamp = stamp;
    }
    return this.key;
  }
}

/** keysync's fingerprint (sha256 of the key), as `keysync status` shows it. */
function fingerprint(key) {
  return "sha256:" + crypto.createHash("sha256").update(key).digest("hex");
}

module.exports = { KeyFile, fingerprint };

if (require.main === module) {
  const variable = process.argv[2] || "OPENAI_API_KEY_FILE";
  const path = process.env[variable];
  if (!path) {
    console.error(`consumer: set ${variable} to the key file keysync renders`);
    process.exit(1);
  }
  const keyFile = new KeyFile(path);
  let last = null;
  setInterval(() => {
    let key;
    try {
      key = keyFile.get();
    } catch (e) {
      console.log(`consumer: waiting for ${path}: ${e.message}`);
      return;
    }
    if (key !== last) {
      console.log(`consumer: using key ${fingerprint(key).slice(0, 19)}… from ${variable}`);
      last = key;
    }
  }, 200);
}
