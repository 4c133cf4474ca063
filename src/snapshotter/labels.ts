/**
 * The labels containerd's unpacker sends with `Prepare` (the layer
 * descriptor's annotations filtered to `containerd.io/snapshot/*`, plus
 * `containerd.io/snapshot.ref`), and what they tell about a layer that can be
 * served remotely. Two label sets name the image: stargz-snapshotter's (sent
 * by `ctr-remote image rpull`) and the CRI plugin's (also nerdctl's).
 */

/** The chain ID the unpacker will look the layer up by: required before answering ALREADY_EXISTS. */
export const snapshotRefLabel = 'containerd.io/snapshot.ref';

export const stargzLabels = {
  reference: 'containerd.io/snapshot/remote/stargz.reference',
  digest: 'containerd.io/snapshot/remote/stargz.digest',
  layers: 'containerd.io/snapshot/remote/stargz.layers',
} as const;

export const criLabels = {
  imageRef: 'containerd.io/snapshot/cri.image-ref',
  manifestDigest: 'containerd.io/snapshot/cri.manifest-digest',
  layerDigest: 'containerd.io/snapshot/cri.layer-digest',
  imageLayers: 'containerd.io/snapshot/cri.image-layers',
} as const;

/** A layer containerd asks for, named well enough to be served without downloading it. */
export interface RemoteLayerRequest {
  /** The chain ID to commit it under. */
  chainId: string;
  /** The image reference, as the client pulled it (`host/repo:tag`). */
  reference: string;
  /** The layer's blob digest. */
  layerDigest: string;
  /** The manifest, when the client said which (CRI); else resolved from `reference`. */
  manifestDigest?: string;
  labelSet: 'stargz' | 'cri';
}

/** The remote layer these labels name, or undefined (the ordinary path then). */
export function remoteLayerRequest(labels: Record<string, string>): RemoteLayerRequest | undefined {
  const chainId = labels[snapshotRefLabel];
  if (!chainId) return undefined;
  const stargzRef = labels[stargzLabels.reference];
  const stargzDigest = labels[stargzLabels.digest];
  if (stargzRef && stargzDigest) return { chainId, reference: stargzRef, layerDigest: stargzDigest, labelSet: 'stargz' };
  const criRef = labels[criLabels.imageRef];
  const criDigest = labels[criLabels.layerDigest];
  if (criRef && criDigest) {
    const manifestDigest = labels[criLabels.manifestDigest];
    return { chainId, reference: criRef, layerDigest: criDigest, ...(manifestDigest ? { manifestDigest } : {}), labelSet: 'cri' };
  }
  return undefined;
}
