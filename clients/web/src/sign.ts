// RFC 9421 HTTP Message Signatures exactly as docs/AUTH.md specifies them for
// clients: label `piqchat`, covered ("@method" "@authority" "@path"
// ["@query"] [headers...]), parameters created, nonce, alg, keyid, tag in
// that order, RFC 8941 canonical serialisation, WebCrypto Ed25519.

import { base64, base64url } from "./base64.js";
import type { Identity } from "./keys.js";

/** The signature label the server prefers. */
export const LABEL = "piqchat";

export interface SignInput {
  method: string;
  /** The absolute URL the request is sent to. */
  url: string;
  /** Request headers; covered header values are read from here. */
  headers?: Headers;
  /** The server key from GetInfo (`server_public_key`). */
  tag: string;
  /** Request header names to cover, e.g. `content-digest`; each must be set. */
  coverHeaders?: string[];
  /** Unix seconds; default now. */
  created?: number;
  /** Unix seconds after which the signature is void; default none. */
  expires?: number;
  /** Default: 16 random bytes as base64url. Never reuse one. */
  nonce?: string;
}

export interface Signed {
  /** The `Signature-Input` header value. */
  signatureInput: string;
  /** The `Signature` header value. */
  signature: string;
  /** The signature base that was signed (for debugging). */
  base: string;
}

/** RFC 8941 sf-string: printable ASCII only, `"` and `\` escaped. */
function sfString(value: string): string {
  if (!/^[\x20-\x7e]*$/.test(value)) throw new Error(`not printable ASCII: ${JSON.stringify(value)}`);
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** The components' lines and the @signature-params value of one request. */
export function signatureBase(userId: string, input: SignInput): { base: string; params: string } {
  const u = new URL(input.url);
  // URL.host is lowercase and omits the scheme's default port: the
  // @authority the client sends as Host / :authority.
  const components: [string, string][] = [
    ['"@method"', input.method.toUpperCase()],
    ['"@authority"', u.host],
    ['"@path"', u.pathname || "/"],
  ];
  // An empty query ("/x?") is still a query: URL.search is "" for it.
  if ((u.href.split("#")[0] ?? "").includes("?")) components.push(['"@query"', u.search || "?"]);
  const seen = new Set<string>();
  for (const raw of input.coverHeaders ?? []) {
    const name = raw.toLowerCase();
    if (seen.has(name)) continue;
    seen.add(name);
    const value = input.headers?.get(name);
    if (value === null || value === undefined) throw new Error(`covered header ${name} is not set`);
    // Headers.get joins repeated lines with ", " as the server does.
    components.push([sfString(name), value.replace(/^[ \t]+|[ \t]+$/g, "")]);
  }
  const created = input.created ?? Math.floor(Date.now() / 1000);
  const nonce = input.nonce ?? base64url(crypto.getRandomValues(new Uint8Array(16)));
  if (!Number.isSafeInteger(created) || created < 0) throw new Error(`created must be unix seconds: ${created}`);
  const params =
    `(${components.map(([c]) => c).join(" ")})` +
    `;created=${created}` +
    (input.expires !== undefined ? `;expires=${Math.floor(input.expires)}` : "") +
    `;nonce=${sfString(nonce)}` +
    `;alg=${sfString("ed25519")}` +
    `;keyid=${sfString(userId)}` +
    `;tag=${sfString(input.tag)}`;
  for (const [, v] of components) {
    if (!/^[\x20-\x7e]*$/.test(v)) throw new Error(`component value is not printable ASCII: ${JSON.stringify(v)}`);
  }
  const base = [...components.map(([c, v]) => `${c}: ${v}`), `"@signature-params": ${params}`].join("\n");
  return { base, params };
}

/** Signs one request: the `Signature-Input` and `Signature` header values. */
export async function signRequest(id: Identity, input: SignInput): Promise<Signed> {
  const { base, params } = signatureBase(id.userId, input);
  const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, id.privateKey, new TextEncoder().encode(base)));
  return { signatureInput: `${LABEL}=${params}`, signature: `${LABEL}=:${base64(sig)}:`, base };
}

/** `sha-256=:<base64>:`, the RFC 9530 Content-Digest of `body`. */
export async function contentDigest(body: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
  return `sha-256=:${base64(d)}:`;
}

export interface SigningFetchOptions {
  identity: Identity;
  /** The server key (`tag`); called for every request (cache it). */
  serverKey: () => Promise<string>;
  /**
   * Cover an RFC 9530 `Content-Digest` of every request body, as
   * docs/AUTH.md recommends. Default true.
   */
  contentDigest?: boolean;
  /** Further headers to cover when the request has them, e.g. `x-client-version`. */
  coverHeaders?: string[];
  /** Called when the server says the tag is not its key, to drop a cached key. */
  onWrongServer?: () => void;
  /** The clock, in milliseconds; default Date.now. */
  now?: () => number;
  /** The fetch that sends; default globalThis.fetch. */
  fetch?: typeof globalThis.fetch;
}

/**
 * A `fetch` that signs every request it sends. It is the one signing step of
 * this package: connect-web's gRPC-web transport calls it with the exact
 * body bytes it sends (5-byte frame prefix included), so the Content-Digest
 * covers what the server receives without serialising a message twice; the
 * JSON gateway calls use it directly.
 */
export function signingFetch(opts: SigningFetchOptions): typeof globalThis.fetch {
  const digest = opts.contentDigest ?? true;
  return async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    if (typeof Request !== "undefined" && input instanceof Request) {
      throw new TypeError("signingFetch takes a URL and init, not a Request");
    }
    const url = String(input);
    const method = init?.method ?? "GET";
    const headers = new Headers(init?.headers);
    const cover: string[] = [];
    const body = bodyBytes(init?.body);
    if (digest && body) {
      headers.set("content-digest", await contentDigest(body));
      cover.push("content-digest");
    }
    for (const name of opts.coverHeaders ?? []) if (headers.has(name)) cover.push(name);
    const created = Math.floor((opts.now ?? Date.now)() / 1000);
    const s = await signRequest(opts.identity, {
      method,
      url,
      headers,
      tag: await opts.serverKey(),
      coverHeaders: cover,
      created,
    });
    headers.set("signature-input", s.signatureInput);
    headers.set("signature", s.signature);
    const res = await (opts.fetch ?? globalThis.fetch)(url, { ...init, method, headers, body: init?.body ?? null });
    // gRPC answers auth refusals trailers-only, i.e. in the headers.
    if (res.headers.get("grpc-status") === "16" && /tag must be this server/.test(grpcMessage(res.headers))) {
      opts.onWrongServer?.();
    }
    return res;
  };
}

function grpcMessage(h: Headers): string {
  const m = h.get("grpc-message") ?? "";
  try {
    return decodeURIComponent(m);
  } catch {
    return m;
  }
}

/** The bytes of a fetch body, when it has one. */
function bodyBytes(body: BodyInit | null | undefined): Uint8Array<ArrayBuffer> | undefined {
  if (body === undefined || body === null) return undefined;
  if (typeof body === "string") return new TextEncoder().encode(body);
  if (body instanceof Uint8Array) return new Uint8Array(body.buffer as ArrayBuffer, body.byteOffset, body.byteLength);
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer as ArrayBuffer, body.byteOffset, body.byteLength);
  throw new TypeError("signingFetch needs the body as bytes or a string to cover its content-digest");
}
