/**
 * A private podman 4.3 (CNI backend) for one test run: its own --root/--runroot,
 * tmp_dir and containers.conf (via CONTAINERS_CONF), as
 * /work/shared/reference/runtimes.md describes: runc, cgroupfs, file events
 * logger, explicit ulimits, network_backend cni, the plugin dir and a
 * network_config_dir of our own. lock_type "file" keeps podman's locks in the
 * private tmp_dir instead of the machine-wide /dev/shm/libpod_lock. Nothing it
 * creates lives outside its dir except the container netns under /run/netns
 * (while containers exist) and the cgroups of the --cgroup-parent the caller
 * passes to `podman run`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tryRun } from '../../helpers/sys';
import { removeTree } from './mounts';

export interface PodmanOptions {
  /** Directory holding membrane-cni; /usr/lib/cni is searched after it. */
  cniPluginDir?: string;
  /** Directory holding the .conflist files (network_config_dir). */
  networkConfigDir?: string;
}

export class PodmanEnv {
  readonly root: string;
  readonly runroot: string;
  readonly tmpDir: string;
  readonly confFile: string;
  readonly env: NodeJS.ProcessEnv;

  constructor(readonly dir: string, opts: PodmanOptions = {}) {
    this.root = path.join(dir, 'root');
    this.runroot = path.join(dir, 'runroot');
    this.tmpDir = path.join(dir, 'tmp');
    this.confFile = path.join(dir, 'containers.conf');
    fs.mkdirSync(this.tmpDir, { recursive: true });
    const networkConfigDir = opts.networkConfigDir ?? path.join(dir, 'cni-conf');
    fs.mkdirSync(networkConfigDir, { recursive: true });
    const pluginDirs = [...(opts.cniPluginDir ? [opts.cniPluginDir] : []), '/usr/lib/cni'];
    const q = (s: string) => JSON.stringify(s);
    fs.writeFileSync(
      this.confFile,
      `[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = ${q(path.join(this.tmpDir, 'events.log'))}
runtime = "runc"
lock_type = "file"
tmp_dir = ${q(this.tmpDir)}
volume_path = ${q(path.join(this.root, 'volumes'))}
static_dir = ${q(path.join(this.root, 'libpod'))}

[network]
network_backend = "cni"
cni_plugin_dirs = [${pluginDirs.map(q).join(', ')}]
network_config_dir = ${q(networkConfigDir)}
`,
    );
    this.env = { ...process.env, CONTAINERS_CONF: this.confFile };
    delete this.env.CONTAINERS_STORAGE_CONF;
  }

  run(args: string[], timeoutMs = 60_000) {
    return tryRun('podman', ['--root', this.root, '--runroot', this.runroot, ...args], { env: this.env, timeoutMs });
  }

  must(args: string[], timeoutMs = 60_000): string {
    const r = this.run(args, timeoutMs);
    if (r.code !== 0) throw new Error(`podman ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()} ${r.stdout.trim()}`);
    return r.stdout;
  }

  /** Import a rootfs directory as an image (no registry needed). */
  importRootfs(rootfs: string, ref: string, changes: string[] = []): void {
    const tar = path.join(this.dir, `${path.basename(rootfs)}.tar`);
    const t = tryRun('tar', ['-C', rootfs, '-cf', tar, '.']);
    if (t.code !== 0) throw new Error(`tar ${rootfs}: ${t.stderr}`);
    this.must(['import', ...changes.flatMap((c) => ['--change', c]), tar, ref], 60_000);
    fs.rmSync(tar, { force: true });
  }

  /** Remove every container (DEL for networked ones), then the storage; unmount what is left. */
  cleanup(): void {
    if (fs.existsSync(this.root)) {
      this.run(['rm', '-af', '-t', '0'], 30_000);
      this.run(['rmi', '-af'], 15_000);
    }
    removeTree(this.dir);
  }
}

/** A rootfs with busybox-static and a few applet links (sh, sleep, ping, ip, ...). */
export function busyboxRootfs(dir: string, busybox = '/bin/busybox'): string {
  fs.mkdirSync(path.join(dir, 'bin'), { recursive: true });
  for (const d of ['etc', 'proc', 'sys', 'dev', 'tmp', 'run']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  fs.copyFileSync(busybox, path.join(dir, 'bin/busybox'));
  fs.chmodSync(path.join(dir, 'bin/busybox'), 0o755);
  for (const a of ['sh', 'sleep', 'ping', 'ip', 'ifconfig', 'cat', 'ls', 'hostname', 'wget', 'nc']) {
    fs.symlinkSync('busybox', path.join(dir, 'bin', a));
  }
  fs.writeFileSync(path.join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  fs.writeFileSync(path.join(dir, 'etc/group'), 'root:x:0:\n');
  return dir;
}
