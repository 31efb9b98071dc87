/**
 * Minimal client for the agent API over its Unix socket (node:http only, so
 * the CNI plugin stays small and starts fast).
 */
import * as http from 'node:http';

export class ApiError extends Error {
  constructor(message: string, readonly status: number, readonly kind?: string, readonly body?: unknown, readonly field?: string) {
    super(message);
  }
}

/**
 * The agent accepted the request but the connection ended before it answered
 * (it was stopped, restarted or died mid-request): whether the request took
 * effect is unknown, and it can be retried.
 */
export class AgentConnectionLost extends Error {
  constructor(readonly socket: string, readonly cause: Error) {
    super(`the membrane agent at ${socket} closed the connection before answering (${cause.message}); try again`);
  }
}

export class AgentUnreachable extends Error {
  constructor(readonly socket: string, readonly cause: Error) {
    super(`cannot reach the membrane agent at ${socket}: ${cause.message}`);
  }
}

export class AgentClient {
  constructor(readonly socket: string, readonly timeoutMs = 30_000) {}

  request<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.socket,
          method,
          path,
          headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
          timeout: this.timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: any = undefined;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              parsed = text;
            }
            if ((res.statusCode ?? 500) >= 400) {
              const msg = parsed && typeof parsed === 'object' && parsed.error ? parsed.error : `HTTP ${res.statusCode}`;
              reject(new ApiError(msg, res.statusCode ?? 500, parsed?.kind, parsed, typeof parsed?.field === 'string' ? parsed.field : undefined));
            } else resolve(parsed as T);
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`timed out after ${this.timeoutMs} ms`)));
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED' || e.code === 'EACCES') reject(new AgentUnreachable(this.socket, e));
        else if (e.code === 'ECONNRESET' || e.code === 'EPIPE') reject(new AgentConnectionLost(this.socket, e));
        else reject(e);
      });
      if (payload) req.write(payload);
      req.end();
    });
  }

  /**
   * GET a newline-delimited stream and call onLine for each line; resolves when
   * the server ends the response (or close() is called on the returned handle).
   */
  stream(path: string, onLine: (line: string) => void): { done: Promise<void>; close(): void } {
    let req: http.ClientRequest;
    const done = new Promise<void>((resolve, reject) => {
      req = http.request({ socketPath: this.socket, method: 'GET', path }, (res) => {
        if ((res.statusCode ?? 500) >= 400) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            let msg = `HTTP ${res.statusCode}`;
            try {
              msg = JSON.parse(Buffer.concat(chunks).toString()).error ?? msg;
            } catch {
              /* not JSON */
            }
            reject(new ApiError(msg, res.statusCode ?? 500));
          });
          return;
        }
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          buf += c;
          let i: number;
          while ((i = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            if (line) onLine(line);
          }
        });
        res.on('end', () => {
          if (buf) onLine(buf);
          resolve();
        });
        res.on('close', () => resolve());
      });
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'ECONNRESET' && req.destroyed) return resolve();
        if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED' || e.code === 'EACCES') reject(new AgentUnreachable(this.socket, e));
        else reject(e);
      });
      req.end();
    });
    return { done, close: () => req.destroy() };
  }

  get<T = unknown>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }
}
