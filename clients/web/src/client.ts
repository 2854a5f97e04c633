// One inbox server as an app sees it: typed gRPC-web clients for every
// service, signed with the app's identity, the server's info cached, and the
// few calls that need more than a generated method (sign-up through an
// invite, sends checked against the limits, downloads assembled, the push
// subscription shim).

import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { errorFromResponse } from "./errors.js";
import { AccountService } from "./gen/piqchat/inbox/v1/accounts_pb.js";
import { BackupService } from "./gen/piqchat/inbox/v1/backups_pb.js";
import {
  ExchangeService,
  type AcceptExchangeResponse,
} from "./gen/piqchat/inbox/v1/exchanges_pb.js";
import { InfoService, type GetInfoResponse } from "./gen/piqchat/inbox/v1/info_pb.js";
import {
  ParcelService,
  type SendParcelRequestSchema,
  type SendParcelResponse,
} from "./gen/piqchat/inbox/v1/parcels_pb.js";
import { parseInviteLink, resolveAcceptUrl, serverBase, serverOfAcceptUrl, type InviteLink } from "./invite.js";
import type { Identity } from "./keys.js";
import { checkSendParcel } from "./limits.js";
import { pushSubscriptionBody, type PushSubscriptionBody } from "./push.js";
import { signingFetch } from "./sign.js";

export interface InboxClientOptions {
  /** The server's base URL: `https://inbox.example.org`, `http://127.0.0.1:8080`, a bare host (https). */
  baseUrl: string;
  /** The caller; needed for every call but GetInfo and AcceptExchange. */
  identity?: Identity;
  /**
   * Sign with this server key instead of asking GetInfo for it (a key the
   * app pinned, or another server's key to test refusals).
   */
  serverKey?: string;
  /** Sent (and signed) as `x-client-version` on every call; ListParcels records it. */
  clientVersion?: string;
  /** Cover a Content-Digest of every request body (docs/AUTH.md recommends it). Default true. */
  contentDigest?: boolean;
  /** Interceptors run before signing, outermost first (e.g. to add headers). */
  interceptors?: Interceptor[];
  /** The clock for `created`, in milliseconds; default Date.now. */
  now?: () => number;
  /** The fetch that sends; default globalThis.fetch. */
  fetch?: typeof globalThis.fetch;
}

/** Typed clients of one inbox server; see createInboxClient. */
export class InboxClient {
  readonly baseUrl: string;
  readonly identity: Identity | undefined;
  /** Signed transport (gRPC-web, binary). */
  readonly transport: Transport;
  /** Unsigned transport, for the public calls. */
  readonly publicTransport: Transport;
  /** A fetch that signs, for the JSON gateway (`${baseUrl}/v1/...`). */
  readonly fetch: typeof globalThis.fetch;

  readonly accounts: Client<typeof AccountService>;
  readonly backups: Client<typeof BackupService>;
  readonly exchanges: Client<typeof ExchangeService>;
  readonly parcels: Client<typeof ParcelService>;
  /** InfoService (public, unsigned); prefer info(), which caches. */
  readonly infoService: Client<typeof InfoService>;

  readonly #opts: InboxClientOptions;
  #info: Promise<GetInfoResponse> | undefined;

  constructor(opts: InboxClientOptions) {
    this.#opts = opts;
    this.baseUrl = serverBase(opts.baseUrl);
    this.identity = opts.identity;
    const headers: Interceptor[] = [...(opts.interceptors ?? [])];
    if (opts.clientVersion !== undefined) {
      const version = opts.clientVersion;
      headers.push((next) => async (req) => {
        req.header.set("x-client-version", version);
        return await next(req);
      });
    }
    this.publicTransport = createGrpcWebTransport({
      baseUrl: this.baseUrl,
      useBinaryFormat: true,
      interceptors: headers,
      fetch: opts.fetch,
    });
    const identity = opts.identity;
    this.fetch = identity
      ? signingFetch({
          identity,
          serverKey: () => this.serverKey(),
          contentDigest: opts.contentDigest,
          coverHeaders: ["x-client-version"],
          onWrongServer: () => (this.#info = undefined),
          now: opts.now,
          fetch: opts.fetch,
        })
      : () => Promise.reject(new Error("this call is signed: create the client with an identity"));
    this.transport = createGrpcWebTransport({
      baseUrl: this.baseUrl,
      useBinaryFormat: true,
      interceptors: headers,
      fetch: this.fetch,
    });
    this.accounts = createClient(AccountService, this.transport);
    this.backups = createClient(BackupService, this.transport);
    this.exchanges = createClient(ExchangeService, this.transport);
    this.parcels = createClient(ParcelService, this.transport);
    this.infoService = createClient(InfoService, this.publicTransport);
  }

  /** GetInfo, fetched once and cached (`refresh` fetches again). */
  info(opts: { refresh?: boolean } = {}): Promise<GetInfoResponse> {
    if (!this.#info || opts.refresh) {
      const p = this.infoService.getInfo({});
      this.#info = p;
      // A failed fetch is not cached.
      p.catch(() => {
        if (this.#info === p) this.#info = undefined;
      });
    }
    return this.#info;
  }

  /** The server key every signature carries as `tag`. */
  async serverKey(): Promise<string> {
    return this.#opts.serverKey ?? (await this.info()).serverPublicKey;
  }

  /**
   * Accepts an invite link: the placeholder host becomes this server (a
   * sign-up invite); a link to another server's exchange is accepted there.
   * Signs this identity up unless `signUp` is false; `answer` is the
   * acceptor's card for a contact exchange.
   */
  async acceptInvite(
    link: string | InviteLink,
    opts: { answer?: string; signUp?: boolean; callOptions?: CallOptions } = {},
  ): Promise<AcceptExchangeResponse> {
    const invite = typeof link === "string" ? parseInviteLink(link) : link;
    const acceptUrl = resolveAcceptUrl(invite, this.baseUrl);
    const server = serverOfAcceptUrl(acceptUrl);
    const userId = opts.signUp === false ? undefined : this.identity?.userId;
    if (userId === undefined && opts.answer === undefined) {
      throw new Error("accepting needs an answer card or an identity to sign up");
    }
    const client =
      server === this.baseUrl
        ? createClient(ExchangeService, this.publicTransport)
        : createClient(
            ExchangeService,
            createGrpcWebTransport({
              baseUrl: server,
              useBinaryFormat: true,
              interceptors: this.#opts.interceptors,
              fetch: this.#opts.fetch,
            }),
          );
    return await client.acceptExchange({ token: invite.token, userId, answer: opts.answer }, opts.callOptions);
  }

  /**
   * SendParcel after checking it against GetInfo's limits (a LimitError
   * says what to fix). connect-web serialises on the calling thread: for
   * large attachments from a page, see the Worker helper
   * (`@piqchat/inbox-client/worker`).
   */
  async sendParcel(
    req: MessageInitShape<typeof SendParcelRequestSchema>,
    callOptions?: CallOptions,
  ): Promise<SendParcelResponse> {
    checkSendParcel((await this.info()).limits, req);
    return await this.parcels.sendParcel(req, callOptions);
  }

  /**
   * Downloads a parcel's attachment whole. `onProgress` gets the bytes so
   * far and the total from `x-content-length`.
   */
  async downloadAttachment(
    parcelId: string,
    opts: { onProgress?: (received: number, total: number | undefined) => void; callOptions?: CallOptions } = {},
  ): Promise<Uint8Array<ArrayBuffer>> {
    let total: number | undefined;
    const onHeader = (h: Headers): void => {
      const n = Number(h.get("x-content-length") ?? NaN);
      if (Number.isSafeInteger(n) && n >= 0) total = n;
      opts.callOptions?.onHeader?.(h);
    };
    const parts: Uint8Array[] = [];
    let received = 0;
    for await (const m of this.parcels.downloadAttachment({ parcelId }, { ...opts.callOptions, onHeader })) {
      parts.push(m.chunk);
      received += m.chunk.length;
      opts.onProgress?.(received, total);
    }
    if (total !== undefined && received !== total) {
      throw new Error(`the attachment arrived with ${received} bytes, the server announced ${total}`);
    }
    const all = new Uint8Array(received);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return all;
  }

  /**
   * Registers (replaces) the Web Push subscription through the JSON shim,
   * with `PushSubscription.toJSON()` as the body, as is.
   */
  async setPushSubscription(
    sub: { toJSON(): unknown } | PushSubscriptionBody,
    opts: { contentEncoding?: string; signal?: AbortSignal } = {},
  ): Promise<void> {
    const body = JSON.stringify(pushSubscriptionBody(sub, opts.contentEncoding));
    const res = await this.fetch(`${this.baseUrl}/v1/account/push-subscription`, {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: new TextEncoder().encode(body),
      signal: opts.signal,
    });
    if (!res.ok) throw await errorFromResponse(res);
    await res.body?.cancel();
  }
}

/** The clients of the server at `opts.baseUrl`, signed with `opts.identity`. */
export function createInboxClient(opts: InboxClientOptions): InboxClient {
  return new InboxClient(opts);
}
