import { formatReference, type PathReference } from '../reference/reference.js';
import { OciLayoutSource } from './oci-layout-source.js';
import { TarArchive } from './tar-archive.js';

/**
 * `oci-archive:FILE[:ref]`: an OCI image layout inside a tar (gzip or zstd
 * compressed archives are decompressed once into `tmpDir`). The layout logic is
 * OciLayoutSource's, reading the tar's members instead of a directory's files.
 */
export async function openOciArchiveSource(ref: PathReference, options: { tmpDir: string }): Promise<OciLayoutSource> {
  const description = `oci-archive:${ref.path}`;
  const archive = await TarArchive.open(ref.path, { tmpDir: options.tmpDir, description });
  return new OciLayoutSource(archive, { name: formatReference(ref), ...(ref.ref !== undefined ? { ref: ref.ref } : {}) });
}
