/**
 * A private containerd 1.6 for one test run, configured as
 * /work/shared/reference/runtimes.md describes: config version 2, its own root,
 * state, gRPC and ttrpc addresses under a temp dir, CRI with
 * restrict_oom_score_adj = true, a local sandbox (pause) image, the runc v2
 * runtime with cgroupfs, and cni.bin_dir/conf_dir of our own. Plugins that
 * would touch host paths outside the temp dir (/opt/containerd) or probe
 * unavailable filesystems are disabled.
 *
 * It can run in a given network namespace (nsenter --net): containerd then
 * creates pod netns files under /var/run/netns as usual but calls the CNI
 * plugin from that namespace, like a node whose "host" netns is that one.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { sleep, tryRun } from '../../helpers/sys';
import { pidsWithCmdline, removeTree } from './mounts';

const SHIM_SOCKET_ROOT = '/run/containerd';

export interface ContainerdOptions {
  cniBinDir: string;
  cniConfDir: string;
  sandboxImage: string;
  /** Run containerd inside this netns (a /run/netns path); default: the caller's. */
  netnsPath?: string;
  logFile?: string;
}

export class Containerd {
  readonly root: string;
  readonly state: string;
  readonly address: string;
  readonly configFile: string;
  readonly logFile: string;
  proc?: ChildProcess;
  private logFd?: number;
  /** containerd 1.6 always puts shim sockets under /run/containerd/s; remove it afterwards if we created it. */
  private runDirExisted = true;

  constructor(readonly dir: string, readonly opts: ContainerdOptions) {
    this.root = path.join(dir, 'root');
    this.state = path.join(dir, 'state');
    this.address = path.join(dir, 'containerd.sock');
    this.configFile = path.join(dir, 'config.toml');
    this.logFile = opts.logFile ?? path.join(dir, 'containerd.log');
    fs.mkdirSync(dir, { recursive: true });
  }

  writeConfig(): void {
    const q = (s: string) => JSON.stringify(s);
    const cri = 'plugins."io.containerd.grpc.v1.cri"';
    fs.writeFileSync(
      this.configFile,
      `version = 2
root = ${q(this.root)}
state = ${q(this.state)}
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = ${q(this.address)}

[ttrpc]
  address = ${q(this.address + '.ttrpc')}

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[${cri}]
  restrict_oom_score_adj = true
  sandbox_image = ${q(this.opts.sandboxImage)}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true

[${cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[${cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[${cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = ${q(path.join(this.dir, 'runc'))}

[${cri}.cni]
  bin_dir = ${q(this.opts.cniBinDir)}
  conf_dir = ${q(this.opts.cniConfDir)}
  max_conf_num = 1
`,
    );
  }

  /** Start containerd in the background; bounded wait until its socket answers. */
  async start(timeoutMs = 20_000): Promise<void> {
    this.writeConfig();
    this.runDirExisted = fs.existsSync(SHIM_SOCKET_ROOT);
    this.logFd = fs.openSync(this.logFile, 'a');
    const cmd = ['containerd', '--config', this.configFile];
    const [bin, ...args] = this.opts.netnsPath ? ['nsenter', `--net=${this.opts.netnsPath}`, '--', ...cmd] : cmd;
    this.proc = spawn(bin, args, { stdio: ['ignore', this.logFd, this.logFd] });
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        throw new Error(`containerd exited (${this.proc.exitCode ?? this.proc.signalCode}):\n${this.log(40)}`);
      }
      if (fs.existsSync(this.address) && this.ctr(['version'], 5_000).code === 0) return;
      await sleep(100);
    }
    throw new Error(`containerd did not answer on ${this.address} within ${timeoutMs} ms:\n${this.log(40)}`);
  }

  ctr(args: string[], timeoutMs = 60_000) {
    return tryRun('ctr', ['--address', this.address, ...args], { timeoutMs });
  }

  log(lines = 30): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  /** Shims (and their containers) started by this containerd, found by its address on their command line. */
  shimPids(): number[] {
    return pidsWithCmdline(`-address ${this.address}`);
  }

  /** Stop containerd (TERM, then KILL), kill any shim of ours still running, unmount and remove the dir. */
  async stop(): Promise<void> {
    const p = this.proc;
    if (p && p.exitCode === null && p.signalCode === null) {
      let timer: NodeJS.Timeout | undefined;
      const exited = new Promise<void>((r) => p.once('exit', () => r()));
      p.kill('SIGTERM');
      await Promise.race([exited, new Promise<void>((r) => (timer = setTimeout(r, 10_000)))]);
      clearTimeout(timer);
      if (p.exitCode === null && p.signalCode === null) {
        p.kill('SIGKILL');
        await Promise.race([exited, new Promise<void>((r) => (timer = setTimeout(r, 5_000)))]);
        clearTimeout(timer);
      }
    }
    if (this.logFd !== undefined) fs.closeSync(this.logFd);
    this.logFd = undefined;
    for (const pid of this.shimPids()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }

  cleanup(): void {
    removeTree(this.dir);
    if (!this.runDirExisted) {
      for (const d of [`${SHIM_SOCKET_ROOT}/s`, SHIM_SOCKET_ROOT]) {
        try {
          fs.rmdirSync(d); // only if empty: never what another containerd uses
        } catch {
          /* not empty or gone */
        }
      }
    }
  }
}
