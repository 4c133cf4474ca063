import { test } from 'node:test';
import assert from 'node:assert/strict';
import { remoteLayerRequest } from '../../src/snapshotter/labels.js';

test('remote layer requests from the stargz and CRI label sets, never without snapshot.ref', () => {
  const ref = { 'containerd.io/snapshot.ref': 'sha256:c1' };
  assert.deepEqual(
    remoteLayerRequest({
      ...ref,
      'containerd.io/snapshot/remote/stargz.reference': 'host:5000/app:v1',
      'containerd.io/snapshot/remote/stargz.digest': 'sha256:l1',
      'containerd.io/snapshot/remote/stargz.layers': 'sha256:l1,sha256:l2',
    }),
    { chainId: 'sha256:c1', reference: 'host:5000/app:v1', layerDigest: 'sha256:l1', labelSet: 'stargz' },
  );
  const cri = {
    'containerd.io/snapshot/cri.image-ref': 'host:5000/app:v1',
    'containerd.io/snapshot/cri.manifest-digest': 'sha256:m',
    'containerd.io/snapshot/cri.layer-digest': 'sha256:l1',
    'containerd.io/snapshot/cri.image-layers': 'sha256:l1',
  };
  assert.deepEqual(remoteLayerRequest({ ...ref, ...cri }), {
    chainId: 'sha256:c1',
    reference: 'host:5000/app:v1',
    layerDigest: 'sha256:l1',
    manifestDigest: 'sha256:m',
    labelSet: 'cri',
  });
  assert.equal(remoteLayerRequest(cri), undefined, 'no snapshot.ref: the ordinary path');
  assert.equal(remoteLayerRequest({ ...ref, 'containerd.io/snapshot/stargz/toc.digest': 'sha256:t' }), undefined, 'plain ctr pull of eStargz: nothing names the image');
});
