/**
 * Requests to the jupyter_tunnel server extension (`{base_url}jupyter-tunnel/api/`).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** A tunnel as the server reports it (the same JSON as `jupyter tunnel list --json`). */
export interface ITunnel {
  name: string;
  state: string;
  target: string;
  hops: string[];
  hop_index?: number;
  local_port: number | null;
  remote_port: number | null;
  url: string | null;
  owner: string;
  pid: number;
  created?: number;
  since?: number;
  reconnects?: number;
  attempt?: number;
  problem?: string | null;
  orphaned?: boolean;
  error: ITunnelError | null;
  /**
   * The question a hop asks during the login, while it waits for an answer (null
   * otherwise). Its text comes from a remote server: show it as text, never as HTML.
   */
  prompt?: IPrompt | null;
  /**
   * The path under this Jupyter server where the remote JupyterLab is served (no token;
   * also reachable under JupyterHub), or null when it cannot be (``served_why`` says why).
   */
  served_url?: string | null;
  /** Why the remote JupyterLab cannot be served here ("" when it can). */
  served_why?: string;
  /** False for a tunnel that forwards no Jupyter (a remote kernel's, say). */
  jupyter?: boolean;
  /** What a tunnel of a remote kernel carries (absent for other tunnels). */
  kernel?: Record<string, unknown> | null;
  /** With --resume: what its resumable connections hold (null: it does not resume). */
  resume?: {
    held: number;
    buffered: number;
    connections: number;
    helper_reached: boolean;
  } | null;
}

/** A question a hop asks during the login (a one-time code, a password, a passphrase). */
export interface IPrompt {
  /** Names this question in the answer (a new question has a new id). */
  id: string;
  /** The hop's alias, e.g. `unicorn`. */
  hop: string;
  /** How to name the hop, e.g. `unicorn (10.0.0.2)`. */
  label: string;
  /** The SSH server's own prompt, e.g. "One-time password (OATH) for `root': ". */
  text: string;
  /** False for a secret (a password field). */
  echo: boolean;
  /** keyboard-interactive, password or passphrase. */
  kind: string;
  /** keyboard-interactive's name and instruction lines, if the server sent any. */
  instructions: string;
}

/** Why a tunnel failed. */
export interface ITunnelError {
  error: string;
  kind: string;
  hop: string | null;
}

/** What the Open form sends. */
export interface IOpenRequest {
  target: string;
  via: string[];
  name?: string;
  local_port?: number;
  remote_port?: number;
  launch?: boolean;
}

/** An error answer of the API, with the server's message. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly kind: string = 'error'
  ) {
    super(message);
  }

  /** The server extension is not installed or not enabled. */
  get missing(): boolean {
    return this.status === 404 && this.kind === 'missing';
  }
}

/** A reply's body, and the server's clock at the time (for uptimes). */
export interface IReply<T> {
  data: T;
  serverTime: number | null;
}

const API = 'jupyter-tunnel/api';

/** Call the API; throw an {@link ApiError} whose message a person can act on. */
export async function request<T>(
  path: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<IReply<T>> {
  const url = URLExt.join(settings.baseUrl, API, path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(
      `cannot reach the Jupyter server: ${(error as Error).message}`,
      0,
      'network'
    );
  }
  const text = await response.text();
  let data: any = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const fromExtension = data !== null && typeof data === 'object' && 'kind' in data;
    if (response.status === 404 && !fromExtension) {
      throw new ApiError(
        'The jupyter_tunnel server extension is not running on this Jupyter server, so ' +
          'tunnels cannot be opened from here. Install jupyter-tunnel where the server runs ' +
          '(pip install jupyter-tunnel) or enable it (jupyter server extension enable ' +
          'jupyter_tunnel), then restart the server.',
        404,
        'missing'
      );
    }
    const message =
      (data && (data.message as string)) ||
      `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status, (data && data.kind) || 'http');
  }
  const date = response.headers.get('Date');
  const serverTime = date ? Date.parse(date) / 1000 : null;
  return { data: data as T, serverTime };
}

/** Every tunnel of the user. */
export function listTunnels(): Promise<IReply<ITunnel[]>> {
  return request<ITunnel[]>('tunnels');
}

/** Open a tunnel; the server answers at once, while it connects. */
export async function openTunnel(body: IOpenRequest): Promise<ITunnel> {
  const reply = await request<ITunnel>('tunnels', {
    method: 'POST',
    body: JSON.stringify(body)
  });
  return reply.data;
}

/** Close a tunnel (or dismiss a failed one). */
export async function closeTunnel(name: string): Promise<ITunnel> {
  const reply = await request<ITunnel>(`tunnels/${encodeURIComponent(name)}`, {
    method: 'DELETE'
  });
  return reply.data;
}

/**
 * Answer the question ``id`` that tunnel ``name`` shows (its `prompt`); the tunnel. The
 * answer is sent once and kept nowhere here; a 409 says that question no longer waits.
 */
export async function answerPrompt(name: string, id: string, answer: string): Promise<ITunnel> {
  const reply = await request<ITunnel>(`tunnels/${encodeURIComponent(name)}/answer`, {
    method: 'POST',
    body: JSON.stringify({ id, answer })
  });
  return reply.data;
}

/** Host names of the server's ssh config, to suggest. */
export async function listHosts(): Promise<string[]> {
  const reply = await request<{ hosts: string[] }>('hosts');
  return reply.data.hosts;
}

/** A local kernelspec of ours: a kernel of ``target`` run there through a tunnel. */
export interface IKernelSpec {
  /** The local kernelspec's name, e.g. `beast-python3`. */
  name: string;
  /** As the launcher shows it, e.g. "Python 3 (ipykernel) on beast". */
  display_name: string;
  /** The kernelspec's name on the target, e.g. `python3`. */
  remote_kernel: string;
  target: string;
  via: string[];
}

/** A remote kernel started through jupyter_tunnel that this machine knows of. */
export interface IRunningKernel {
  kernel: string | null;
  remote_kernel: string | null;
  target: string | null;
  tunnel: string | null;
  state: string | null;
}

/** What ``POST kernels`` sends: whose kernels to use here. */
export interface IKernelsRequest {
  target: string;
  via: string[];
  kernels?: string[];
  cwd?: string;
}

/** The kernelspecs of remote kernels installed here, and the remote kernels running. */
export async function listKernels(): Promise<{
  installed: IKernelSpec[];
  running: IRunningKernel[];
}> {
  const reply = await request<{ installed: IKernelSpec[]; running: IRunningKernel[] }>(
    'kernels'
  );
  return reply.data;
}

/**
 * Install a kernelspec here for each kernel of the target (all, or those named): slow, the
 * server logs in to the hosts to ask the target. What was installed.
 */
export async function installKernels(body: IKernelsRequest): Promise<IKernelSpec[]> {
  const reply = await request<{ installed: IKernelSpec[] }>('kernels', {
    method: 'POST',
    body: JSON.stringify(body)
  });
  return reply.data.installed;
}

/** Remove a kernelspec that jupyter_tunnel installed (404: not one of ours). */
export async function removeKernel(name: string): Promise<void> {
  await request<null>(`kernels/${encodeURIComponent(name)}`, { method: 'DELETE' });
}
