/**
 * Minimal client for the agent API over its Unix socket (node:http only, so
 * the CNI plugin stays small and starts fast).
 */
import * as http from 'node:http';

export class ApiError extends Error {
  constructor(message: string, readonly status: number, readonly kind?: string, readonly body?: unknown) {
    super(message);
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
              reject(new ApiError(msg, res.statusCode ?? 500, parsed?.kind, parsed));
            } else resolve(parsed as T);
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`timed out after ${this.timeoutMs} ms`)));
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED' || e.code === 'EACCES') reject(new AgentUnreachable(this.socket, e));
        else reject(e);
      });
      if (payload) req.write(payload);
      req.end();
    });
  }

  get<T = unknown>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }
}
