export class BlindPeerError extends Error {
  constructor (code, message) {
    super(message)
    this.code = code
  }
}
