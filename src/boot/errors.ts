// A kernel or module image Partita cannot boot; the message always names the file and what is wrong.
export class BootImageError extends Error {
  constructor(
    readonly file: string,
    readonly problem: string,
  ) {
    super(`${file}: ${problem}`);
    this.name = 'BootImageError';
  }
}
