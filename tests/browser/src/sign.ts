// RFC 9421 HTTP Message Signatures with Ed25519, exactly as docs/AUTH.md
// specifies them for clients: label `piqchat`, covered
// ("@method" "@authority" "@path" ["@query"] [headers...]), parameters
// created, nonce, alg, keyid, tag in that order, RFC 8941 serialisation.
// WebCrypto Ed25519 does the signing; the private key never leaves the page.

import type { Interceptor } from "@connectrpc/connect";

export const LABEL = "piqchat";

/** The caller's identity: an Ed25519 key pair and its user id. */
export interface Identity {
  userId: string;
  privateKey: CryptoKey;
}

/** Unpadded base64url (RFC 4648 §5), the text form of user ids and nonces. */
export function b64url(bytes: Uint8Array): string {
  return b64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Standard base64 with padding, as in RFC 8941 byte sequences. */
export function b64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** The identity of a 32-byte Ed25519 seed (RFC 8032), for the worked example. */
export async function identityFromSeed(seed: Uint8Array, userId: string): Promise<Identity> {
  // PKCS#8 wrapping of an Ed25519 seed (RFC 8410): a fixed 16-byte prefix.
  const prefix = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
  const pkcs8 = new Uint8Array([...prefix, ...seed]);
  const privateKey = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
  return { userId, privateKey };
}

/** A new Ed25519 key pair (non-extractable private key) and its user id. */
export async function newIdentity(): Promise<Identity> {
  const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, false, [
    "sign",
    "verify",
  ])) as CryptoKeyPair;
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  if (raw.length !== 32) throw new Error(`Ed25519 public key has ${raw.length} bytes`);
  return { userId: b64url(raw), privateKey: pair.privateKey };
}

/** RFC 8941 sf-string: printable ASCII, `"` and `\` escaped. */
function sfString(value: string): string {
  if (!/^[\x20-\x7e]*$/.test(value)) throw new Error(`not printable ASCII: ${value}`);
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** What a request signature covers besides the derived components. */
export interface SignOptions {
  /** The server key from GetInfo (`server_public_key`). */
  tag: string;
  /** Request headers to cover, lowercase names (their values must be set). */
  coverHeaders?: string[];
  /** Fixed `created` and `nonce`, only for reproducing docs/AUTH.md's example. */
  fixed?: { created: number; nonce: string };
}

/**
 * Signs one request: returns the `Signature-Input` and `Signature` header
 * values for `method` on `url`, reading covered header values from `headers`.
 */
export async function signRequest(
  id: Identity,
  method: string,
  url: string,
  headers: Headers,
  opts: SignOptions,
): Promise<{ signatureInput: string; signature: string; base: string }> {
  const u = new URL(url);
  // URL.host is lowercase and omits the scheme's default port: exactly the
  // @authority the browser sends as Host.
  const components: [string, string][] = [
    ['"@method"', method.toUpperCase()],
    ['"@authority"', u.host],
    ['"@path"', u.pathname || "/"],
  ];
  if ((url.split("#")[0] ?? "").includes("?")) components.push(['"@query"', u.search || "?"]);
  for (const name of opts.coverHeaders ?? []) {
    const value = headers.get(name);
    if (value === null) throw new Error(`covered header ${name} is not set`);
    components.push([sfString(name.toLowerCase()), value.trim()]);
  }
  const created = opts.fixed?.created ?? Math.floor(Date.now() / 1000);
  const nonce = opts.fixed?.nonce ?? b64url(crypto.getRandomValues(new Uint8Array(16)));
  const params =
    `(${components.map(([c]) => c).join(" ")})` +
    `;created=${created}` +
    `;nonce=${sfString(nonce)}` +
    `;alg=${sfString("ed25519")}` +
    `;keyid=${sfString(id.userId)}` +
    `;tag=${sfString(opts.tag)}`;
  const base = [...components.map(([c, v]) => `${c}: ${v}`), `"@signature-params": ${params}`].join(
    "\n",
  );
  const sig = new Uint8Array(
    await crypto.subtle.sign({ name: "Ed25519" }, id.privateKey, new TextEncoder().encode(base)),
  );
  return { signatureInput: `${LABEL}=${params}`, signature: `${LABEL}=:${b64(sig)}:`, base };
}

/** A connect interceptor that signs every call made through its transport. */
export function signingInterceptor(id: Identity, tag: () => string): Interceptor {
  return (next) => async (req) => {
    const s = await signRequest(id, req.requestMethod, req.url, req.header, { tag: tag() });
    req.header.set("Signature-Input", s.signatureInput);
    req.header.set("Signature", s.signature);
    return await next(req);
  };
}

/** `sha-256=:<base64>:` for an RFC 9530 Content-Digest header. */
export async function contentDigest(body: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
  return `sha-256=:${b64(d)}:`;
}
