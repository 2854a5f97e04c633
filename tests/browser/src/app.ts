// The test client page: what the piqchat web app does against an inbox
// server, reduced to the calls, through the project's own client package
// `@piqchat/inbox-client` (clients/web). One page is one user (one Ed25519
// key, made here with WebCrypto and never exported). The Node script
// (run.mjs) drives it through `window.piq`; every network call happens in the
// browser, over gRPC-web or, for the push-subscription shim, the package's
// signing fetch of the JSON gateway. Results come back as plain JSON
// ({ok: <proto JSON>} or {error: {code, message}}) for the script to assert.

import { createClient, type Transport } from "@connectrpc/connect";
import { fromJson, toJson, type DescService, type JsonValue } from "@bufbuild/protobuf";
import {
  AccountService,
  BackupService,
  ExchangeService,
  InfoService,
  ParcelService,
  base64,
  base64url,
  createInboxClient,
  generateIdentity,
  importSecretKey,
  parseInviteLink,
  pushSubscriptionBody,
  signRequest,
  toInboxError,
  type Identity,
  type InboxClient,
} from "@piqchat/inbox-client";

const SERVICES: Record<string, DescService> = {
  InfoService,
  ExchangeService,
  ParcelService,
  AccountService,
  BackupService,
};

const CLIENT_VERSION = "browser-e2e/1";

type Result = { ok: JsonValue; ms: number } | { error: { code: string; message: string }; ms: number };

let me: Identity | undefined;
const servers = new Map<string, InboxClient>();
let attachment: Uint8Array<ArrayBuffer> | undefined;

function identity(): Identity {
  if (!me) throw new Error("piq.init() first");
  return me;
}

function server(name: string): InboxClient {
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

function failure(e: unknown, started: number): Result {
  const err = toInboxError(e);
  return { error: { code: err.codeName, message: err.rawMessage }, ms: Date.now() - started };
}

async function sha256Hex(data: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

const piq = {
  /** Makes this page's user: a fresh Ed25519 key. Returns the user id. */
  async init(label: string): Promise<string> {
    me = await generateIdentity();
    document.title = `piqchat e2e: ${label}`;
    const who = document.getElementById("who");
    if (who) who.textContent = `${label}: ${me.userId}`;
    log(`user ${label} = ${me.userId}`);
    return me.userId;
  },

  /** Another fresh user id (a key nobody holds), for negative checks. */
  async strangerId(): Promise<string> {
    return (await generateIdentity()).userId;
  },

  /**
   * Reproduces docs/AUTH.md's worked example (its public test key, fixed
   * created and nonce) with the package's signer, the one every call uses.
   */
  async authExample(): Promise<{ userId: string; signatureInput: string; signature: string; base: string }> {
    const seed = Uint8Array.from(
      "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60".match(/../g)!,
      (h) => parseInt(h, 16),
    );
    const id = await importSecretKey(seed);
    const signed = await signRequest(id, {
      method: "GET",
      url: "https://inbox.example.org/v1/parcels?page_size=20",
      tag: "PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw",
      created: 1767225600,
      nonce: "oKGio6SlpqeoqaqrrK2urw",
    });
    return { userId: id.userId, ...signed };
  },

  /**
   * Learns a server: GetInfo (public, unsigned) gives the key that every
   * signature for it must carry as `tag`. `serverKey` signs with another
   * key instead, to check that a signature made for one server fails at
   * another.
   */
  async connect(name: string, baseUrl: string, serverKey?: string): Promise<Result> {
    const started = Date.now();
    const client = createInboxClient({ baseUrl, identity: identity(), clientVersion: CLIENT_VERSION, serverKey });
    try {
      const info = await client.info();
      servers.set(name, client);
      log(`connect ${name} ${baseUrl}: server key ${info.serverPublicKey}`);
      return { ok: toJson(InfoService.method.getInfo.output, info, { alwaysEmitImplicit: true }), ms: Date.now() - started };
    } catch (e) {
      log(`connect ${name} ${baseUrl} failed: ${String(e)}`);
      return failure(e, started);
    }
  },

  /** A sign-up invite link as the app reads it (the package's parser). */
  parseInviteLink(link: string): { token: string; host: string; needsServer: boolean } {
    const invite = parseInviteLink(link);
    return { token: invite.token, host: new URL(invite.exchangeUrl).host, needsServer: invite.needsServer };
  },

  /**
   * Accepts an invite link on `serverName` as the app does: the
   * placeholder host becomes that server, and this page's user signs up.
   */
  async acceptInvite(serverName: string, link: string): Promise<Result> {
    const started = Date.now();
    try {
      const res = await server(serverName).acceptInvite(link);
      log(`${serverName} acceptInvite -> ${res.signUp}`);
      return { ok: toJson(ExchangeService.method.acceptExchange.output, res, { alwaysEmitImplicit: true }), ms: Date.now() - started };
    } catch (e) {
      const out = failure(e, started);
      if ("error" in out) log(`${serverName} acceptInvite -> ${out.error.code}: ${out.error.message}`);
      return out;
    }
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
    const transport: Transport = opts.unsigned ? s.publicTransport : s.transport;
    const client = createClient(svc, transport) as Record<string, (req: unknown) => Promise<never>>;
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

  /**
   * SendParcel (unary gRPC-web) with the attachment made by makeAttachment:
   * through the package's checked send, or with `precheck: false` straight
   * to the server (to see the server's own refusal).
   */
  async sendParcelWithAttachment(
    serverName: string,
    type: string,
    recipients: { userId: string; content: string }[],
    opts: { precheck?: boolean } = {},
  ): Promise<Result> {
    const started = Date.now();
    if (!attachment) throw new Error("piq.makeAttachment() first");
    const s = server(serverName);
    const req = { type, recipients, attachment };
    try {
      const res = await (opts.precheck === false ? s.parcels.sendParcel(req) : s.sendParcel(req));
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
    let xContentLength: string | null = null;
    let chunks = 0;
    let all: Uint8Array<ArrayBuffer>;
    try {
      all = await server(serverName).downloadAttachment(parcelId, {
        onProgress: () => (chunks += 1),
        callOptions: { onHeader: (h) => (xContentLength = h.get("x-content-length")) },
      });
    } catch (e) {
      const out = failure(e, started);
      if ("error" in out) log(`${serverName} ParcelService.downloadAttachment -> ${out.error.code}: ${out.error.message}`);
      return out as { error: { code: string; message: string }; ms: number };
    }
    const sha256 = await sha256Hex(all);
    const ms = Date.now() - started;
    log(`${serverName} ParcelService.downloadAttachment -> ${all.length} bytes in ${chunks} chunks, sha-256 ${sha256} (${ms} ms)`);
    return { ok: { size: all.length, sha256, chunks, xContentLength }, ms };
  },

  /**
   * Registers a Web Push subscription through the JSON shim
   * `PUT /v1/account/push-subscription`, with the body a browser's
   * `PushSubscription.toJSON()` gives: a real P-256 public key made here and
   * 16 random bytes of auth secret. The package's signing fetch covers the
   * body's Content-Digest, as docs/AUTH.md recommends.
   */
  async putPushSubscription(serverName: string, endpoint: string): Promise<Result> {
    const started = Date.now();
    const p256 = (await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, [
      "deriveBits",
    ])) as CryptoKeyPair;
    const p256dh = new Uint8Array(await crypto.subtle.exportKey("raw", p256.publicKey));
    const subscription = pushSubscriptionBody({
      endpoint,
      expirationTime: null,
      keys: { p256dh: base64url(p256dh), auth: base64url(crypto.getRandomValues(new Uint8Array(16))) },
    });
    try {
      await server(serverName).setPushSubscription(subscription);
      const ms = Date.now() - started;
      log(`${serverName} PUT /v1/account/push-subscription (p256dh ${p256dh.length} bytes) -> OK (${ms} ms)`);
      return { ok: null, ms };
    } catch (e) {
      const out = failure(e, started);
      if ("error" in out) log(`${serverName} PUT /v1/account/push-subscription -> ${out.error.code}: ${out.error.message}`);
      return out;
    }
  },

  b64: base64,
};

declare global {
  interface Window {
    piq: typeof piq;
  }
}
window.piq = piq;
log("page ready");
