// The containerd content source and its client. The registry needs only ContainerdSource;
// the client is exported for tools (doctor, tests) that talk to containerd directly.
export { ContainerdSource } from './source.js';
export { ContainerdClient, isNotFound, type ContainerdImage, type ContentInfo } from './client.js';
