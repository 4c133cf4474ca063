/**
 * What containerd mounts for a snapshot, the way its overlayfs snapshotter
 * answers (containerd `snapshots/overlay/overlay.go` `mounts`): no parent, a
 * bind mount of the snapshot's own dir; a read-only view of one parent, a
 * read-only bind of that parent's dir; otherwise overlay, lowerdirs top first,
 * with upperdir/workdir for an active snapshot.
 */

/** containerd's mount.Mount (types/mount.proto). */
export interface ContainerdMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export function snapshotMounts(s: { kind: 'active' | 'view' | 'committed'; fsDir: string; workDir: string; lowerDirs: string[] }): ContainerdMount[] {
  const writable = s.kind === 'active';
  if (s.lowerDirs.length === 0) {
    return [{ type: 'bind', source: s.fsDir, target: '', options: [writable ? 'rw' : 'ro', 'rbind'] }];
  }
  if (!writable && s.lowerDirs.length === 1) {
    return [{ type: 'bind', source: s.lowerDirs[0]!, target: '', options: ['ro', 'rbind'] }];
  }
  const options = ['index=off'];
  if (writable) options.push(`workdir=${s.workDir}`, `upperdir=${s.fsDir}`);
  // Overlay needs two lowers when there is no upper: a read-only view of many parents has them.
  options.push(`lowerdir=${s.lowerDirs.join(':')}`);
  return [{ type: 'overlay', source: 'overlay', target: '', options }];
}
