export * from './constants';
export * from './errors';
export * from './message';
export { Netns, NetnsError } from './netns';
export * from './rtnetlink';
export { setSysctl, getSysctl, sysctlPath } from './sysctl';
export * from './tc';
