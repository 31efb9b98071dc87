export * from './errors';
export * from './kvstore';
export * from './reflector';
export * from './leased';
export * from './keys';
