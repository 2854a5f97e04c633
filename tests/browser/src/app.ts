// The test client page: what the piqchat web app does against an inbox
// server, reduced to the calls. One page is one user (one Ed25519 key, made
// here with WebCrypto and never exported). The Node script (run.mjs) drives
// it through `window.piq`; every network call happens in the browser, over
// gRPC-web (@connectrpc/connect-web) or, for the push-subscription shim, a
// signed fetch of the JSON gateway. Results come back as plain JSON
// ({ok: <proto JSON>} or {error: {code, message}}) for the script to assert.

import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { fromJson, toJson, type DescService, type JsonValue } from "@bufbuild/protobuf";
import { AccountService } from "../dist/gen/piqchat/inbox/v1/accounts_pb";
import { BackupService } from "../dist/gen/piqchat/inbox/v1/backups_pb";
import { ExchangeService } from "../dist/gen/piqchat/inbox/v1/exchanges_pb";
import { InfoService } from "../dist/gen/piqchat/inbox/v1/info_pb";
import { ParcelService } from "../dist/gen/piqchat/inbox/v1/parcels_pb";
import {
  b64,
  b64url,
  contentDigest,
  identityFromSeed,
  newIdentity,
  signRequest,
  signingInterceptor,
  type Identity,
} from "./sign";

const SERVICES: Record<string, DescService> = {
  InfoService,
  ExchangeService,
  ParcelService,
  AccountService,
  BackupService,
};

const CLIENT_VERSION = "browser-e2e/1";

/** One inbox server as this page knows it. */
interface Server {
  baseUrl: string;
  /** The server key from GetInfo: the `tag` of every signature. */
  tag: string;
  signed: Transport;
  unsigned: Transport;
}

type Result = { ok: JsonValue; ms: number } | { error: { code: string; message: string }; ms: number };

let me: Identity | undefined;
const servers = new Map<string, Server>();
let attachment: Uint8Array | undefined;

function identity(): Identity {
  if (!me) throw new Error("piq.init() first");
  return me;
}

function server(name: string): Server {
  const s = servers.get(name);
  if (!s) throw new Error(`unknown server ${name}; piq.connect() first`);
  return s;
}

/** A line in the page (visible in screenshots) and in the console log. */
function log(line: string): void {
  const t = new Date().toISOString().slice(11, 23);
  console.log(`[${t}] ${line}`);
  const pre = document.getElementById("log");
  if (pre) pre.textContent += `${t} ${line}\n`;
}

/** `PermissionDenied` → `PERMISSION_DENIED`, the gRPC spelling. */
function codeName(code: Code): string {
  return (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function failure(e: unknown, started: number): Result {
  const err = ConnectError.from(e);
  return { error: { code: codeName(err.code), message: err.rawMessage }, ms: Date.now() - started };
}

async function sha256Hex(data: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

function transports(baseUrl: string, tag: () => string): { signed: Transport; unsigned: Transport } {
  const clientVersion: Interceptor = (next) => async (req) => {
    req.header.set("x-client-version", CLIENT_VERSION);
    return await next(req);
  };
  const common = { baseUrl, useBinaryFormat: true };
  return {
    // The first interceptor is the outermost: every header is set before
    // the signer, next to the network, runs.
    signed: createGrpcWebTransport({
      ...common,
      interceptors: [clientVersion, signingInterceptor(identity(), tag)],
    }),
    unsigned: createGrpcWebTransport({ ...common, interceptors: [clientVersion] }),
  };
}

const piq = {
  /** Makes this page's user: a fresh Ed25519 key. Returns the user id. */
  async init(label: string): Promise<string> {
    me = await newIdentity();
    document.title = `piqchat e2e: ${label}`;
    const who = document.getElementById("who");
    if (who) who.textContent = `${label}: ${me.userId}`;
    log(`user ${label} = ${me.userId}`);
    return me.userId;
  },

  /** Another fresh user id (a key nobody holds), for negative checks. */
  async strangerId(): Promise<string> {
    return (await newIdentity()).userId;
  },

  /**
   * Reproduces docs/AUTH.md's worked example (its public test key, fixed
   * created and nonce) with the signer this page uses for every call.
   */
  async authExample(): Promise<{ signatureInput: string; signature: string; base: string }> {
    const seed = Uint8Array.from(
      "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60".match(/../g)!,
      (h) => parseInt(h, 16),
    );
    const id = await identityFromSeed(seed, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    return await signRequest(id, "GET", "https://inbox.example.org/v1/parcels?page_size=20", new Headers(), {
      tag: "PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw",
      fixed: { created: 1767225600, nonce: "oKGio6SlpqeoqaqrrK2urw" },
    });
  },

  /**
   * Learns a server: GetInfo (public, unsigned) gives the key that every
   * signature for it must carry as `tag`. `tagOverride` signs with another
   * key instead, to check that a signature made for one server fails at
   * another.
   */
  async connect(name: string, baseUrl: string, tagOverride?: string): Promise<Result> {
    const started = Date.now();
    let tag = "";
    const t = transports(baseUrl, () => tag);
    try {
      const info = await createClient(InfoService, t.unsigned).getInfo({});
      tag = tagOverride ?? info.serverPublicKey;
      servers.set(name, { baseUrl, tag, ...t });
      log(`connect ${name} ${baseUrl}: server key ${info.serverPublicKey}`);
      return { ok: toJson(InfoService.method.getInfo.output, info, { alwaysEmitImplicit: true }), ms: Date.now() - started };
    } catch (e) {
      log(`connect ${name} ${baseUrl} failed: ${String(e)}`);
      return failure(e, started);
    }
  },

  /**
   * The accept URL's token from a sign-up invite link
   * (`https://piqchat.net/#?exchange-url=<URL-encoded accept URL>&exchange-key=`),
   * as the app reads it; the app would put the user's server in place of
   * the `input_inbox_server_host` placeholder.
   */
  parseInviteLink(link: string): { token: string; acceptPath: string; host: string } {
    const url = new URL(link);
    const params = new URLSearchParams(url.hash.replace(/^#\??/, ""));
    const exchangeUrl = params.get("exchange-url");
    if (!exchangeUrl) throw new Error(`no exchange-url in ${link}`);
    if (!params.has("exchange-key")) throw new Error(`no exchange-key in ${link}`);
    const accept = new URL(exchangeUrl);
    const m = /^\/v1\/exchanges\/([^/]+):accept$/.exec(accept.pathname);
    if (!m) throw new Error(`unexpected accept URL ${exchangeUrl}`);
    return { token: decodeURIComponent(m[1]!), acceptPath: accept.pathname, host: accept.host };
  },

  /**
   * One gRPC-web call, `service`.`method` (e.g. "ExchangeService",
   * "acceptExchange") with a proto-JSON request; signed unless `unsigned`.
   */
  async call(
    serverName: string,
    service: string,
    method: string,
    request: JsonValue = {},
    opts: { unsigned?: boolean } = {},
  ): Promise<Result> {
    const started = Date.now();
    const svc = SERVICES[service];
    const m = svc?.method[method];
    if (!svc || !m || m.methodKind !== "unary") throw new Error(`no unary method ${service}.${method}`);
    const s = server(serverName);
    const client = createClient(svc, opts.unsigned ? s.unsigned : s.signed) as Record<
      string,
      (req: unknown) => Promise<never>
    >;
    try {
      const res = await client[method]!(fromJson(m.input, request));
      const out: Result = {
        ok: toJson(m.output, res, { alwaysEmitImplicit: true }),
        ms: Date.now() - started,
      };
      log(`${serverName} ${service}.${method} -> OK (${out.ms} ms)`);
      return out;
    } catch (e) {
      const out = failure(e, started);
      if ("error" in out) log(`${serverName} ${service}.${method} -> ${out.error.code}: ${out.error.message}`);
      return out;
    }
  },

  /** Random attachment bytes, kept in the page; returns their SHA-256. */
  async makeAttachment(size: number): Promise<{ size: number; sha256: string }> {
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
    attachment = bytes;
    const sha256 = await sha256Hex(bytes);
    log(`attachment: ${size} random bytes, sha-256 ${sha256}`);
    return { size, sha256 };
  },

  /** SendParcel (unary gRPC-web) with the attachment made by makeAttachment. */
  async sendParcelWithAttachment(
    serverName: string,
    type: string,
    recipients: { userId: string; content: string }[],
  ): Promise<Result> {
    const started = Date.now();
    if (!attachment) throw new Error("piq.makeAttachment() first");
    const client = createClient(ParcelService, server(serverName).signed);
    try {
      const res = await client.sendParcel({ type, recipients, attachment });
      const out: Result = {
        ok: toJson(ParcelService.method.sendParcel.output, res, { alwaysEmitImplicit: true }),
        ms: Date.now() - started,
      };
      log(`${serverName} ParcelService.sendParcel (${attachment.length} bytes attached) -> OK (${out.ms} ms)`);
      return out;
    } catch (e) {
      const out = failure(e, started);
      if ("error" in out) log(`${serverName} ParcelService.sendParcel -> ${out.error.code}: ${out.error.message}`);
      return out;
    }
  },

  /** DownloadAttachment over gRPC-web server streaming; hashes what arrived. */
  async downloadAttachment(
    serverName: string,
    parcelId: string,
  ): Promise<
    | { ok: { size: number; sha256: string; chunks: number; xContentLength: string | null }; ms: number }
    | { error: { code: string; message: string }; ms: number }
  > {
    const started = Date.now();
    const client = createClient(ParcelService, server(serverName).signed);
    const parts: Uint8Array[] = [];
    let xContentLength: string | null = null;
    try {
      for await (const m of client.downloadAttachment(
        { parcelId },
        { onHeader: (h) => (xContentLength = h.get("x-content-length")) },
      )) {
        parts.push(m.chunk);
      }
    } catch (e) {
      const out = failure(e, started);
      if ("error" in out) log(`${serverName} ParcelService.downloadAttachment -> ${out.error.code}: ${out.error.message}`);
      return out as { error: { code: string; message: string }; ms: number };
    }
    const size = parts.reduce((n, p) => n + p.length, 0);
    const all = new Uint8Array(size);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    const sha256 = await sha256Hex(all);
    const ms = Date.now() - started;
    log(`${serverName} ParcelService.downloadAttachment -> ${size} bytes in ${parts.length} chunks, sha-256 ${sha256} (${ms} ms)`);
    return { ok: { size, sha256, chunks: parts.length, xContentLength }, ms };
  },

  /**
   * Registers a Web Push subscription through the JSON shim
   * `PUT /v1/account/push-subscription`, with the body a browser's
   * `PushSubscription.toJSON()` gives: a real P-256 public key made here and
   * 16 random bytes of auth secret. Signed like every call, and covering
   * the body's Content-Digest as docs/AUTH.md recommends.
   */
  async putPushSubscription(
    serverName: string,
    endpoint: string,
  ): Promise<{ status: number; body: string; ms: number }> {
    const started = Date.now();
    const p256 = (await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, [
      "deriveBits",
    ])) as CryptoKeyPair;
    const p256dh = new Uint8Array(await crypto.subtle.exportKey("raw", p256.publicKey));
    const subscription = {
      endpoint,
      expirationTime: null,
      keys: { p256dh: b64url(p256dh), auth: b64url(crypto.getRandomValues(new Uint8Array(16))) },
    };
    const body = new TextEncoder().encode(JSON.stringify(subscription));
    const s = server(serverName);
    const url = `${s.baseUrl}/v1/account/push-subscription`;
    const headers = new Headers({
      "content-type": "application/json",
      "content-digest": await contentDigest(body),
    });
    const sig = await signRequest(identity(), "PUT", url, headers, {
      tag: s.tag,
      coverHeaders: ["content-digest"],
    });
    headers.set("signature-input", sig.signatureInput);
    headers.set("signature", sig.signature);
    const res = await fetch(url, { method: "PUT", headers, body });
    const text = await res.text();
    const ms = Date.now() - started;
    log(`${serverName} PUT /v1/account/push-subscription (p256dh ${p256dh.length} bytes) -> HTTP ${res.status} (${ms} ms)`);
    return { status: res.status, body: text, ms };
  },

  b64,
};

declare global {
  interface Window {
    piq: typeof piq;
  }
}
window.piq = piq;
log("page ready");
