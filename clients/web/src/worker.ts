// Large sends off the page's main thread. connect-web serialises a message
// on the thread that calls it, which blocks a page for 100–200 ms per
// 20 MiB attachment; a Worker does it instead. The page keeps its key as a
// CryptoKey and passes it to the worker by structured clone (a
// non-extractable key stays non-extractable there).
//
//   // inbox-worker.ts, bundled as its own module
//   import { serveInboxWorker } from "@piqchat/inbox-client/worker";
//   serveInboxWorker(self);
//
//   // in the page
//   import { createWorkerSender } from "@piqchat/inbox-client/worker";
//   const worker = new Worker(new URL("./inbox-worker.js", import.meta.url), { type: "module" });
//   const sender = createWorkerSender(worker, { baseUrl, identity, clientVersion });
//   const res = await sender.sendParcel({ type: "MEDIA", recipients, attachment });

import type { MessageInitShape } from "@bufbuild/protobuf";
import { ConnectError, type Code } from "@connectrpc/connect";
import { InboxClient } from "./client.js";
import { InboxError, LimitError, toInboxError } from "./errors.js";
import type { SendParcelRequestSchema, SendParcelResponse } from "./gen/piqchat/inbox/v1/parcels_pb.js";
import type { Identity } from "./keys.js";

/** A Worker, a worker's global scope or a MessagePort. */
export interface PortLike {
  postMessage(message: unknown, transfer?: Transferable[]): void;
  addEventListener(type: "message", listener: (ev: MessageEvent) => void): void;
}

/** What the worker needs to build its own client; all structured-clonable. */
export interface WorkerClientOptions {
  baseUrl: string;
  identity: Identity;
  clientVersion?: string;
  contentDigest?: boolean;
}

type SendRequest = MessageInitShape<typeof SendParcelRequestSchema>;

interface Call {
  id: number;
  op: "sendParcel";
  client: WorkerClientOptions;
  request: SendRequest;
}

type Reply =
  | { id: number; ok: { deliveredRecipientIds: string[]; forbiddenRecipientIds: string[] } }
  | { id: number; error: WireError };

interface WireError {
  code: Code;
  message: string;
  retryDelayMs?: number;
  limit?: { limit: string; actual: number; max: number };
}

/** Runs in the worker: answers the page's calls with a client per server and key. */
export function serveInboxWorker(port: PortLike): void {
  const clients = new Map<string, InboxClient>();
  port.addEventListener("message", (ev: MessageEvent) => {
    const call = ev.data as Call;
    if (!call || call.op !== "sendParcel") return;
    void (async () => {
      let reply: Reply;
      try {
        const key = `${call.client.baseUrl} ${call.client.identity.userId}`;
        let client = clients.get(key);
        if (!client) {
          client = new InboxClient(call.client);
          clients.set(key, client);
        }
        const res = await client.sendParcel(call.request);
        reply = {
          id: call.id,
          ok: { deliveredRecipientIds: res.deliveredRecipientIds, forbiddenRecipientIds: res.forbiddenRecipientIds },
        };
      } catch (e) {
        reply = { id: call.id, error: wireError(e) };
      }
      port.postMessage(reply);
    })();
  });
  // MessagePorts deliver nothing until started; Workers have no start().
  (port as { start?: () => void }).start?.();
}

function wireError(e: unknown): WireError {
  const err = toInboxError(e);
  const out: WireError = { code: err.code, message: err.rawMessage, retryDelayMs: err.retryDelayMs };
  if (err instanceof LimitError) out.limit = { limit: err.limit, actual: err.actual, max: err.max };
  return out;
}

function fromWire(w: WireError): InboxError {
  if (w.limit) {
    const e = new LimitError(w.limit.limit, "", w.limit.actual, w.limit.max);
    Object.defineProperty(e, "rawMessage", { value: w.message });
    e.message = `INVALID_ARGUMENT: ${w.message}`;
    return e;
  }
  return new InboxError(w.code, w.message, { retryDelayMs: w.retryDelayMs, cause: new ConnectError(w.message, w.code) });
}

export interface WorkerSender {
  /**
   * SendParcel in the worker. With `transfer`, the attachment's buffer
   * moves to the worker (no copy; it is unusable here afterwards).
   */
  sendParcel(req: SendRequest, opts?: { transfer?: boolean }): Promise<Pick<SendParcelResponse, "deliveredRecipientIds" | "forbiddenRecipientIds">>;
}

/** Runs in the page: sends through the worker that runs serveInboxWorker. */
export function createWorkerSender(port: PortLike, client: WorkerClientOptions): WorkerSender {
  let next = 0;
  const pending = new Map<number, { resolve: (v: Reply) => void }>();
  port.addEventListener("message", (ev: MessageEvent) => {
    const reply = ev.data as Reply;
    const p = reply && pending.get(reply.id);
    if (!p) return;
    pending.delete(reply.id);
    p.resolve(reply);
  });
  (port as { start?: () => void }).start?.();
  return {
    async sendParcel(req, opts = {}) {
      const id = next++;
      const reply = await new Promise<Reply>((resolve) => {
        pending.set(id, { resolve });
        const call: Call = { id, op: "sendParcel", client, request: req };
        const transfer = opts.transfer && req.attachment ? [req.attachment.buffer as ArrayBuffer] : [];
        port.postMessage(call, transfer);
      });
      if ("error" in reply) throw fromWire(reply.error);
      return reply.ok;
    },
  };
}
